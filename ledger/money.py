"""Money rules: which currencies exist and which amounts a single movement may carry.

Amounts are integers in the currency's minor unit (cents for EUR). Floats are never
accepted: 0.1 + 0.2 != 0.3 is a bug class a ledger cannot afford. The upper bound is
2**53 - 1 so that every JSON client, JavaScript included, reads an amount exactly.
"""

from __future__ import annotations

MIN_AMOUNT = 1
MAX_AMOUNT = 2**53 - 1

# Active ISO 4217 codes (funds and precious metals excluded).
ISO_4217_CODES: frozenset[str] = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL
    BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP
    ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR
    IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL
    LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR
    NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD
    SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX
    USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    """.split()
)


def is_currency(code: str) -> bool:
    """True for an active ISO 4217 code, upper case."""
    return code in ISO_4217_CODES
