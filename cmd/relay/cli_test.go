package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// TestFlagHelpAndErrors holds every command's flags to what a shell user
// expects: -h prints the usage and succeeds; a bad flag prints the usage
// and fails with the error, which main prints once (the usage alone goes to
// stdout).
func TestFlagHelpAndErrors(t *testing.T) {
	for _, cmd := range [][]string{
		{"send"}, {"serve"}, {"migrate"}, {"jobs", "list"}, {"jobs", "retry"}, {"inbox", "show"}, {"endpoints", "list"},
		{"connect"}, {"connections", "list"}, {"disconnect"}, {"reconcile"},
	} {
		name := strings.Join(cmd, " ")
		for _, help := range []string{"-h", "--help"} {
			var out bytes.Buffer
			err := run(context.Background(), append(cmd[:len(cmd):len(cmd)], help), envFunc(nil), &out)
			if err != nil || !strings.Contains(out.String(), "usage:") {
				t.Errorf("relay %s %s: %v, printed %q; want the usage and success", name, help, err, out.String())
			}
		}
		var out bytes.Buffer
		err := run(context.Background(), append(cmd[:len(cmd):len(cmd)], "--bogus"), envFunc(nil), &out)
		const want = "flag provided but not defined: -bogus"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("relay %s --bogus: %v, want an error saying %q", name, err, want)
		}
		if !strings.Contains(out.String(), "usage:") || strings.Contains(out.String(), "bogus") {
			t.Errorf("relay %s --bogus printed %q; want the usage without the error, which main prints", name, out.String())
		}
	}
}

// TestMalformedNumberReportedOnce: a value that does not parse is one error,
// not also a range check's.
func TestMalformedNumberReportedOnce(t *testing.T) {
	for key, want := range map[string]string{
		"RELAY_WORKERS":       `RELAY_WORKERS: "abc" is not a whole number`,
		"RELAY_MAX_ATTEMPTS":  `RELAY_MAX_ATTEMPTS: "abc" is not a whole number`,
		"RELAY_JOB_TIMEOUT":   `RELAY_JOB_TIMEOUT: "abc" is not a duration such as 5s`,
		"RELAY_RESCUE_AFTER":  `RELAY_RESCUE_AFTER: "abc" is not a duration such as 5s`,
		"RELAY_POLAR_API_RPM": `RELAY_POLAR_API_RPM: "abc" is not a whole number`,
	} {
		_, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x", key: "abc"}), false)
		if err == nil || err.Error() != "configuration: "+want {
			t.Errorf("%s=abc: %v; want exactly %q", key, err, want)
		}
	}
}

// TestPolarAPIConfig: Polar's API URLs and budget default to Polar's own
// and 60 a minute; a URL that is not one is refused, naming its variable.
func TestPolarAPIConfig(t *testing.T) {
	c, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x"}), false)
	if err != nil {
		t.Fatal(err)
	}
	if c.PolarAPI.ProductionURL != "https://api.polar.sh" || c.PolarAPI.SandboxURL != "https://sandbox-api.polar.sh" ||
		c.PolarAPI.RPM != 60 || c.PublicURL != "" {
		t.Errorf("defaults: %+v, public URL %q", c.PolarAPI, c.PublicURL)
	}
	c, err = parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x", "RELAY_PUBLIC_URL": "https://relay.example.com/",
		"RELAY_POLAR_SANDBOX_API_URL": "http://127.0.0.1:9999", "RELAY_POLAR_API_RPM": "30"}), false)
	if err != nil || c.PublicURL != "https://relay.example.com" || c.PolarAPI.SandboxURL != "http://127.0.0.1:9999" || c.PolarAPI.RPM != 30 {
		t.Errorf("set: %v %+v %q", err, c, c.PublicURL)
	}
	for key, val := range map[string]string{"RELAY_PUBLIC_URL": "relay.example.com", "RELAY_POLAR_API_URL": "ftp://api.polar.sh",
		"RELAY_POLAR_SANDBOX_API_URL": "https://x/?a=b", "RELAY_POLAR_API_RPM": "0"} {
		if _, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x", key: val}), false); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s=%s: %v, want an error naming it", key, val, err)
		}
	}
}

// TestReconcileConfig: RELAY_RECONCILE_INTERVAL (10m), RELAY_RECONCILE_LOOKBACK
// (72h) and RELAY_POLAR_REENABLE (on) by default, set, and refused when wrong.
func TestReconcileConfig(t *testing.T) {
	c, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x"}), false)
	if err != nil {
		t.Fatal(err)
	}
	if c.ReconcileInterval != 10*time.Minute || c.ReconcileLookback != 72*time.Hour || !c.PolarReenable {
		t.Errorf("defaults: %v %v %v", c.ReconcileInterval, c.ReconcileLookback, c.PolarReenable)
	}
	c, err = parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x", "RELAY_RECONCILE_INTERVAL": "1m",
		"RELAY_RECONCILE_LOOKBACK": "24h", "RELAY_POLAR_REENABLE": "off"}), false)
	if err != nil || c.ReconcileInterval != time.Minute || c.ReconcileLookback != 24*time.Hour || c.PolarReenable {
		t.Errorf("set: %v %+v", err, c)
	}
	for key, val := range map[string]string{"RELAY_RECONCILE_INTERVAL": "0s", "RELAY_RECONCILE_LOOKBACK": "soon", "RELAY_POLAR_REENABLE": "maybe"} {
		if _, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x", key: val}), false); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s=%s: %v, want an error naming it", key, val, err)
		}
	}
}

func TestLocalWebhookURL(t *testing.T) {
	for _, tc := range []struct{ addr, path, want string }{
		{"", "", "http://127.0.0.1:8080/webhooks/polar"},
		{":9000", "/hooks/polar", "http://127.0.0.1:9000/hooks/polar"},
		{"0.0.0.0:9000", "", "http://127.0.0.1:9000/webhooks/polar"},
		{"[::]:9000", "", "http://[::1]:9000/webhooks/polar"},
		{"10.1.2.3:8081", "", "http://10.1.2.3:8081/webhooks/polar"},
	} {
		got := localWebhookURL(envFunc(map[string]string{"RELAY_HTTP_ADDR": tc.addr, "RELAY_WEBHOOK_PATH": tc.path}))
		if got != tc.want {
			t.Errorf("RELAY_HTTP_ADDR=%q RELAY_WEBHOOK_PATH=%q: %s, want %s", tc.addr, tc.path, got, tc.want)
		}
	}
}

// TestSendFindsServeByItsEnvironment: with the environment relay serve has,
// relay send needs no --url.
func TestSendFindsServeByItsEnvironment(t *testing.T) {
	_, port, err := net.SplitHostPort(testkit.FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"DATABASE_URL":         testdb.New(t),
		"POLAR_WEBHOOK_SECRET": testSecret,
		"RELAY_HTTP_ADDR":      ":" + port, // every interface, as the default
		"RELAY_WEBHOOK_PATH":   "/hooks/polar",
		"RELAY_ADMIN_ADDR":     testkit.FreeAddr(t),
		"LOG_FORMAT":           "text",
	}
	serveInProcess(t, env)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"send", "../../testdata/events/customer.created.json"}, envFunc(env), &out); err != nil ||
		!strings.HasPrefix(out.String(), "200 OK") {
		t.Fatalf("send without --url: %v; printed %q", err, out.String())
	}
}

// TestTakenPortNamesItsVariable: a port in use stops serve with an error
// that says which variable moves it.
func TestTakenPortNamesItsVariable(t *testing.T) {
	dbURL := testdb.New(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, key := range []string{"RELAY_HTTP_ADDR", "RELAY_ADMIN_ADDR"} {
		env := map[string]string{
			"DATABASE_URL":         dbURL,
			"POLAR_WEBHOOK_SECRET": testSecret,
			"RELAY_HTTP_ADDR":      testkit.FreeAddr(t),
			"RELAY_ADMIN_ADDR":     testkit.FreeAddr(t),
		}
		env[key] = taken.Addr().String()
		err := run(context.Background(), []string{"serve"}, envFunc(env), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("serve with %s taken: %v; want an address-in-use error naming %s", key, err, key)
		}
	}
}

// TestMaxUnverifiedBytes: the unverified requests' budget defaults to 64 MiB,
// or four of the largest bodies, and must hold two of them.
func TestMaxUnverifiedBytes(t *testing.T) {
	for _, tc := range []struct {
		body, budget string
		want         int64
		err          string
	}{
		{"", "", 64 << 20, ""},
		{"33554432", "", 128 << 20, ""},
		{"", "4194304", 4 << 20, ""},
		{"", "2097151", 0, "RELAY_MAX_UNVERIFIED_BYTES (2097151) must be at least twice RELAY_MAX_BODY_BYTES (1048576)"},
	} {
		cfg, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x",
			"RELAY_MAX_BODY_BYTES": tc.body, "RELAY_MAX_UNVERIFIED_BYTES": tc.budget}), false)
		switch {
		case tc.err != "" && (err == nil || err.Error() != "configuration: "+tc.err):
			t.Errorf("body %q, budget %q: %v, want %q", tc.body, tc.budget, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("body %q, budget %q: %v", tc.body, tc.budget, err)
		case tc.err == "" && cfg.MaxUnverifiedBytes != tc.want:
			t.Errorf("body %q, budget %q: %d, want %d", tc.body, tc.budget, cfg.MaxUnverifiedBytes, tc.want)
		}
	}
}
