// Package httpjson writes the JSON answers of relay's HTTP APIs.
package httpjson

import (
	"encoding/json"
	"net/http"
)

// Write answers with status and v as indented JSON, not to be cached.
func Write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) //nolint:errcheck // the client went away
}
