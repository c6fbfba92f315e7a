package ledger

import (
	"fmt"
	"strings"
)

// minorDigits are ISO 4217's currencies without two minor digits.
var minorDigits = map[string]int{
	"BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
	"PYG": 0, "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
	"BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}

// Money writes an amount in minor units with its currency's decimals:
// Money(4950, "usd") is "49.50 USD". Integer arithmetic only.
func Money(minor int64, currency string) string {
	return Amount(minor, currency) + " " + strings.ToUpper(currency)
}

// Amount is Money without the currency code: Amount(4950, "usd") is "49.50".
func Amount(minor int64, currency string) string {
	digits, ok := minorDigits[strings.ToUpper(currency)]
	if !ok {
		digits = 2
	}
	sign := ""
	u := uint64(minor)
	if minor < 0 {
		sign, u = "-", uint64(-minor) // -MinInt64 wraps to itself, which uint64 reads right
	}
	if digits == 0 {
		return fmt.Sprintf("%s%d", sign, u)
	}
	div := uint64(1)
	for range digits {
		div *= 10
	}
	return fmt.Sprintf("%s%d.%0*d", sign, u/div, digits, u%div)
}
