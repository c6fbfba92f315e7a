package main

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// withoutEcho runs read with the terminal's echo off when stdin is one,
// so that a token typed at the prompt is never shown. A pipe is read as
// it is.
func withoutEcho(stdin io.Reader, stderr io.Writer, prompt string, read func() error) error {
	f, ok := stdin.(*os.File)
	if !ok {
		return read()
	}
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil { // not a terminal
		return read()
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	quiet.Lflag |= unix.ICANON | unix.ISIG
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return err
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old) //nolint:errcheck // best effort: the terminal is restored
	io.WriteString(stderr, prompt)
	defer io.WriteString(stderr, "\n")
	return read()
}
