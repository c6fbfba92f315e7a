//go:build !linux

package testkit

import (
	"errors"
	"testing"
)

// Tmpfs needs Linux.
func Tmpfs(tb testing.TB, size string) (string, error) {
	return "", errors.New("a tmpfs mount needs Linux")
}
