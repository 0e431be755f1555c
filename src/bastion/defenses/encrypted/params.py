"""CKKS parameters chosen from a model's multiplicative depth, at 128-bit security.

A CKKS ciphertext lives modulo ``Q = q_0 q_1 ... q_L`` (plus one special prime for key switching); every plaintext
multiplication or squaring followed by a rescale consumes one prime, so a program of multiplicative depth ``L``
needs ``L`` middle primes of ``scale_bits`` bits each (the scale is ``2**scale_bits``), a first prime that holds the
result (``scale_bits + INTEGER_BITS`` bits: outputs up to ``2**(INTEGER_BITS - 1)`` in absolute value) and a special
prime as large as the first. The ring degree ``N`` fixes both the number of slots (``N/2`` samples per ciphertext
in bastion's layout) and the largest total modulus that is still 128-bit secure.

The bound comes from the Homomorphic Encryption Security Standard (Albrecht et al., HomomorphicEncryption.org,
2018), Table 1, classical 128-bit security with a ternary secret — the same table Microsoft SEAL enforces
(``CoeffModulus::MaxBitCount``). :func:`choose_params` takes the smallest ``N`` at which a scale of at least
``MIN_SCALE_BITS`` fits (smaller ``N``: faster operations, smaller ciphertexts) and then the largest scale up to
``MAX_SCALE_BITS`` that fits at that ``N`` (more bits: smaller CKKS error).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...errors import UsageError

__all__ = [
    "INTEGER_BITS",
    "MAX_SCALE_BITS",
    "MIN_SCALE_BITS",
    "SECURITY_128",
    "CKKSParams",
    "choose_params",
]

SECURITY_128: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
"""Largest total coefficient-modulus size (bits, special prime included) per ring degree N for 128-bit classical
security (HE Security Standard 2018, Table 1, ternary secret)."""

INTEGER_BITS = 10
"""Bits of the first prime above the scale: decrypted scores must stay below 2**9 = 512 in absolute value."""
MIN_SCALE_BITS = 25
MAX_SCALE_BITS = 40
_MAX_PRIME_BITS = 60  # SEAL's limit on one prime


@dataclass(frozen=True)
class CKKSParams:
    """A CKKS parameter set: ring degree, coefficient-modulus primes (bit sizes, first to special) and scale."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        n, bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        if n not in SECURITY_128:
            raise UsageError(f"poly_modulus_degree must be one of {sorted(SECURITY_128)}, got {n}")
        if len(bits) < 3 or any(not 17 <= b <= _MAX_PRIME_BITS for b in bits):
            raise UsageError(f"coeff_mod_bit_sizes needs >= 3 primes of 17..60 bits each, got {list(bits)}")
        if self.total_bits > SECURITY_128[n]:
            raise UsageError(
                f"{self.total_bits} bits of coefficient modulus at N={n} is below 128-bit security "
                f"(at most {SECURITY_128[n]} bits by the HE security standard); use a larger N or fewer primes"
            )

    @property
    def total_bits(self) -> int:
        """log2 of the whole modulus, special prime included: what the security table bounds."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def depth(self) -> int:
        """Multiplicative depth these parameters evaluate: the middle primes."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        """Values per ciphertext: N/2."""
        return self.poly_modulus_degree // 2

    @property
    def security_bits(self) -> int:
        """128 by construction (the constructor refuses anything weaker)."""
        return 128

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return {**d, "total_bits": self.total_bits, "max_bits_128": SECURITY_128[self.poly_modulus_degree]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CKKSParams:
        try:
            return cls(
                int(d["poly_modulus_degree"]), tuple(int(b) for b in d["coeff_mod_bit_sizes"]), int(d["scale_bits"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(
                f"CKKS parameters need poly_modulus_degree, coeff_mod_bit_sizes, scale_bits: {exc}"
            ) from None


def choose_params(depth: int) -> CKKSParams:
    """The CKKS parameters for a program of multiplicative ``depth`` (>= 1) at 128-bit security: the smallest ring
    degree at which a scale of ``MIN_SCALE_BITS`` fits, then the largest scale (<= ``MAX_SCALE_BITS``) there.

    Raises:
        UsageError: ``depth`` < 1, or too deep for N = 32768 at the smallest scale.
    """
    if depth < 1:
        raise UsageError(f"depth must be >= 1 (one plaintext multiplication at least), got {depth}")
    for n, max_bits in sorted(SECURITY_128.items()):
        # first and special primes of scale + INTEGER_BITS bits each, depth middle primes of the scale
        scale = min(MAX_SCALE_BITS, (max_bits - 2 * INTEGER_BITS) // (depth + 2), _MAX_PRIME_BITS - INTEGER_BITS)
        if scale >= MIN_SCALE_BITS:
            outer = scale + INTEGER_BITS
            return CKKSParams(n, (outer, *([scale] * depth), outer), scale)
    raise UsageError(
        f"a multiplicative depth of {depth} does not fit CKKS at 128-bit security with a {MIN_SCALE_BITS}-bit scale "
        f"(N = 32768 allows about {(SECURITY_128[32768] - 2 * INTEGER_BITS) // MIN_SCALE_BITS - 2}); "
        "use fewer layers or polynomial activations of lower degree"
    )
