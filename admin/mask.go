package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Masked replaces every masked value.
const Masked = "***"

// piiKeys name values that identify a customer wherever they appear, also
// with a "customer_" prefix as on Polar checkouts (customer_email, ...).
var piiKeys = map[string]bool{
	"email": true, "name": true, "billing_name": true, "tax_id": true,
	"avatar_url": true, "ip_address": true, "phone": true,
	"line1": true, "line2": true, "postal_code": true, "city": true,
}

// merchantParents hold objects whose "name" is the merchant's own data (a
// product, a price), useful to an operator and not about the customer.
var merchantParents = map[string]bool{
	"product": true, "products": true, "price": true, "prices": true,
	"discount": true, "benefit": true, "benefits": true, "organization": true,
}

// MaskPII returns the JSON document with customer data masked and pretty
// printed: names, e-mail addresses, addresses (all of them, since state and
// country only identify someone next to the rest), tax ids, avatars, IP
// addresses and custom checkout field values. Nulls stay null, so one can
// still see that a value was absent. Object keys come out sorted.
func MaskPII(doc []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber() // keep amounts and ids exactly as sent
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("mask payload: not JSON: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("mask payload: trailing data after the JSON value")
	}
	out, err := json.MarshalIndent(maskValue("", v), "", "  ")
	if err != nil {
		return nil, fmt.Errorf("mask payload: %w", err)
	}
	return out, nil
}

func maskValue(parent string, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, child := range x {
			switch {
			case isPIIKey(parent, k):
				x[k] = maskAll(child)
			case k == "custom_field_data":
				// Field slugs are the merchant's; the answers are the customer's.
				x[k] = maskChildren(child)
			default:
				x[k] = maskValue(k, child)
			}
		}
		return x
	case []any:
		for i, child := range x {
			x[i] = maskValue(parent, child)
		}
		return x
	default:
		return v
	}
}

func isPIIKey(parent, key string) bool {
	k := strings.TrimPrefix(strings.ToLower(key), "customer_")
	if k == "name" && merchantParents[parent] {
		return false
	}
	return piiKeys[k] || k == "address" || strings.HasSuffix(k, "_address")
}

// maskAll masks every non-null leaf of v.
func maskAll(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case map[string]any:
		for k, child := range x {
			x[k] = maskAll(child)
		}
		return x
	case []any:
		for i, child := range x {
			x[i] = maskAll(child)
		}
		return x
	default:
		return Masked
	}
}

// maskChildren keeps an object's keys and masks their values.
func maskChildren(v any) any {
	if m, ok := v.(map[string]any); ok {
		for k, child := range m {
			m[k] = maskAll(child)
		}
		return m
	}
	return maskAll(v)
}
