//go:build !linux

package main

import (
	"errors"
	"io"
	"os"
)

// withoutEcho refuses a terminal where relay cannot turn echo off: the
// token is piped in instead.
func withoutEcho(stdin io.Reader, _ io.Writer, _ string, read func() error) error {
	if f, ok := stdin.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			return errors.New("pipe the token in (relay connect ... < token.txt): typing it here would show it")
		}
	}
	return read()
}
