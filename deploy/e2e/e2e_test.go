// Package e2e checks relay's operator surface end to end: a real relay
// binary receives signed webhooks, a real Prometheus (Debian's package; `make
// test` installs it) scrapes it with deploy/prometheus/alerts.yml loaded, and
// every query of the Grafana dashboard and of the alerts must parse and find
// data.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/polar"
)

const secret = "polar_whs_e2e_secret"

func TestOperatorSurface(t *testing.T) {
	root := repoRoot(t)
	promBin := prometheusBinary(t)
	bin := buildRelay(t, root)
	dbURL := testdb.New(t)
	httpAddr, adminAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	env := append(os.Environ(),
		"DATABASE_URL="+dbURL,
		"POLAR_WEBHOOK_SECRET="+secret,
		"RELAY_HTTP_ADDR="+httpAddr,
		"RELAY_ADMIN_ADDR="+adminAddr,
		"RELAY_SPOOL_DIR="+t.TempDir(), // its metrics are on the dashboard and in the alerts
		"LOG_FORMAT=text",
	)

	migrate := exec.Command(bin, "migrate")
	migrate.Env = env
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("relay migrate: %v\n%s", err, out)
	}
	relay := startProcess(t, "relay", env, bin, "serve")
	waitFor(t, 30*time.Second, "relay's /readyz", func() error {
		return expectStatus("http://"+adminAddr+"/readyz", http.StatusOK)
	})

	// Deliveries: a handled event, an ignored one, a bad signature and a
	// duplicate of the first.
	webhookURL := "http://" + httpAddr + "/webhooks/polar"
	paid := readFile(t, filepath.Join(root, "testdata/events/order.updated.paid.json"))
	customer := readFile(t, filepath.Join(root, "testdata/events/customer.created.json"))
	send(t, webhookURL, secret, "msg_e2e_paid", paid, http.StatusOK)
	send(t, webhookURL, secret, "msg_e2e_customer", customer, http.StatusOK)
	send(t, webhookURL, "polar_whs_wrong_secret", "msg_e2e_forged", paid, http.StatusUnauthorized)
	send(t, webhookURL, secret, "msg_e2e_paid", paid, http.StatusOK)

	dashExprs := dashboardExprs(t, filepath.Join(root, "deploy/grafana/relay.json"))
	alertsPath := filepath.Join(root, "deploy/prometheus/alerts.yml")
	alerts := alertRules(t, alertsPath)

	// Every metric the dashboard and the alerts name must be in relay's
	// /metrics. Series that only appear once an event was worked may take a
	// moment, so this polls; a name relay never exports fails here.
	var names []string
	for _, e := range dashExprs {
		names = append(names, metricNames(e.expr)...)
	}
	for _, a := range alerts {
		names = append(names, metricNames(a.expr)...)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if len(names) < 10 {
		t.Fatalf("found only %d metric names in the dashboard and alerts: %v", len(names), names)
	}
	var missing []string
	waitFor(t, 15*time.Second, "every referenced metric in relay's /metrics", func() error {
		exported, err := exportedNames("http://" + adminAddr + "/metrics")
		if err != nil {
			return err
		}
		missing = missing[:0]
		for _, n := range names {
			if !exported[n] {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("relay does not export %v", missing)
		}
		return nil
	})

	prom := startPrometheus(t, promBin, adminAddr, alertsPath)

	// Synchronisation: the target is up and has been scraped a few times
	// since the deliveries above, so rates over 1m have at least two samples.
	waitFor(t, 30*time.Second, "Prometheus to scrape relay 4 times", func() error {
		v, err := prom.scalar(`sum(count_over_time(up{job="relay"}[1m])) and on() (min(up{job="relay"}) == 1)`)
		if err != nil {
			return err
		}
		if v < 4 {
			return fmt.Errorf("%v scrapes so far", v)
		}
		return nil
	})
	// Every alert rule is loaded and has been evaluated without error.
	waitFor(t, 15*time.Second, "every alert rule to be evaluated", func() error {
		return prom.rulesHealthy(alerts)
	})

	// Dashboard queries: Grafana's interval variables become fixed windows
	// that hold several 1 s scrapes.
	for _, e := range dashExprs {
		q := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1m").Replace(e.expr)
		t.Run("dashboard/"+e.panel+"/"+e.ref, func(t *testing.T) {
			expectData(t, prom, q)
		})
	}

	// Alert expressions. One that does not fire returns nothing, which says
	// nothing about whether its query is right. So every alert is written as
	// "<query> <comparison> <number>" (or absent(<selector>)): the whole
	// expression must parse, and the query before the comparison must
	// return data here. absent(x) must parse and return nothing, because x
	// is exported.
	for _, a := range alerts {
		t.Run("alert/"+a.name, func(t *testing.T) {
			if _, err := prom.query(a.expr); err != nil {
				t.Fatalf("%s: %v", a.expr, err)
			}
			if strings.HasPrefix(a.expr, "absent(") {
				res, _ := prom.query(a.expr)
				if len(res) != 0 {
					t.Errorf("%s returned %s: the metric should be present", a.expr, res)
				}
				return
			}
			lhs, ok := leftOfComparison(a.expr)
			if !ok {
				t.Fatalf("alert %s: expression %q is not of the form <query> <comparison> <number>", a.name, a.expr)
			}
			expectData(t, prom, lhs)
		})
	}

	// Shutdown: SIGTERM, exit 0.
	if err := relay.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-relay.done:
		if relay.err != nil {
			t.Errorf("relay serve exited with %v after SIGTERM", relay.err)
		}
	case <-time.After(40 * time.Second):
		t.Errorf("relay serve did not stop within 40s of SIGTERM")
	}
}

// --- relay ------------------------------------------------------------------

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test file")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found at %s: %v", root, err)
	}
	return root
}

func buildRelay(t *testing.T, root string) string {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			t.Fatal("no go command to build relay with")
		}
	}
	bin := filepath.Join(t.TempDir(), "relay")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/relay")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/relay: %v\n%s", err, out)
	}
	return bin
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func send(t *testing.T, u, key, id string, body []byte, want int) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = polar.SignedHeaders(key, id, time.Now(), body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("deliver %s: %v", id, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("deliver %s: status %d, want %d: %s", id, resp.StatusCode, want, answer)
	}
}

func expectStatus(u string, want int) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body) //nolint:errcheck
	if resp.StatusCode != want {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// exportedNames returns the sample names in a Prometheus text exposition
// (histograms as their _bucket, _sum and _count series).
func exportedNames(u string) (map[string]bool, error) {
	resp, err := http.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	names := make(map[string]bool)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names, sc.Err()
}

// --- processes ---------------------------------------------------------------

type process struct {
	cmd  *exec.Cmd
	out  *testkit.SyncBuffer
	done chan struct{}
	err  error
}

// startProcess starts a command that is stopped, if still running, when t
// ends; its output is logged if t failed.
func startProcess(t *testing.T, name string, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin, args...), out: &testkit.SyncBuffer{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, p.out.String())
		}
		select {
		case <-p.done:
			return
		default:
		}
		p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill() //nolint:errcheck
			<-p.done
		}
	})
	return p
}

// waitFor polls check until it succeeds, failing t with check's last error
// after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: gave up after %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// --- Prometheus --------------------------------------------------------------

func prometheusBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/prometheus"); err == nil {
		return "/usr/bin/prometheus"
	}
	t.Fatal("the prometheus server is not installed: run `make check-ops` (or `make test`), which installs Debian's prometheus package, or apt-get install prometheus")
	return ""
}

type prometheus struct {
	base string
	proc *process
}

func startPrometheus(t *testing.T, bin, target, alertsPath string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: relay
    metrics_path: /metrics
    static_configs:
      - targets: [%q]
`, alertsPath, target)
	configPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testkit.FreeAddr(t)
	proc := startProcess(t, "prometheus", os.Environ(), bin,
		"--config.file="+configPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	p := &prometheus{base: "http://" + addr, proc: proc}
	waitFor(t, 30*time.Second, "Prometheus to be ready", func() error {
		select {
		case <-proc.done:
			t.Fatalf("prometheus exited: %v\n%s", proc.err, proc.out.String())
		default:
		}
		return expectStatus(p.base+"/-/ready", http.StatusOK)
	})
	return p
}

type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

func (p *prometheus) get(path string, params url.Values) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path+"?"+params.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r apiResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("GET %s: status %d, undecodable answer: %w", path, resp.StatusCode, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	return r.Data, nil
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query and returns its vector; scalars come back as
// one sample without labels.
func (p *prometheus) query(q string) ([]sample, error) {
	data, err := p.get("/api/v1/query", url.Values{"query": {q}})
	if err != nil {
		return nil, err
	}
	var res struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, err
	}
	switch res.ResultType {
	case "vector":
		var v []sample
		err := json.Unmarshal(res.Result, &v)
		return v, err
	case "scalar":
		var s [2]any
		err := json.Unmarshal(res.Result, &s)
		return []sample{{Value: s}}, err
	default:
		return nil, fmt.Errorf("result type %s, want a vector", res.ResultType)
	}
}

// scalar returns the single value of q.
func (p *prometheus) scalar(q string) (float64, error) {
	res, err := p.query(q)
	if err != nil {
		return 0, err
	}
	if len(res) != 1 {
		return 0, fmt.Errorf("%s: %d samples, want 1", q, len(res))
	}
	s, _ := res[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}

// rulesHealthy checks that Prometheus loaded every alert of alerts.yml and
// evaluated each without error.
func (p *prometheus) rulesHealthy(alerts []alertRule) error {
	data, err := p.get("/api/v1/rules", url.Values{"type": {"alert"}})
	if err != nil {
		return err
	}
	var res struct {
		Groups []struct {
			Rules []struct {
				Name           string    `json:"name"`
				Health         string    `json:"health"`
				LastError      string    `json:"lastError"`
				LastEvaluation time.Time `json:"lastEvaluation"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return err
	}
	loaded := make(map[string]bool)
	for _, g := range res.Groups {
		for _, r := range g.Rules {
			if r.Health != "ok" {
				return fmt.Errorf("rule %s: health %q: %s", r.Name, r.Health, r.LastError)
			}
			loaded[r.Name] = true
		}
	}
	for _, a := range alerts {
		if !loaded[a.name] {
			return fmt.Errorf("alert %s not loaded or not evaluated yet", a.name)
		}
	}
	return nil
}

func expectData(t *testing.T, p *prometheus, q string) {
	t.Helper()
	res, err := p.query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if len(res) == 0 {
		t.Errorf("%s: no data", q)
	}
}

// --- dashboard and alerts ----------------------------------------------------

type dashExpr struct{ panel, ref, expr string }

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func dashboardExprs(t *testing.T, path string) []dashExpr {
	t.Helper()
	var dash struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(readFile(t, path), &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []dashExpr
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q target %s has no expr", p.Title, tg.RefID)
					continue
				}
				out = append(out, dashExpr{panel: p.Title, ref: tg.RefID, expr: tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	if len(out) == 0 {
		t.Fatalf("%s: no queries found", path)
	}
	return out
}

type alertRule struct{ name, expr string }

var (
	alertLine = regexp.MustCompile(`^\s*-\s*alert:\s*(\S+)\s*$`)
	exprLine  = regexp.MustCompile(`^\s*expr:\s*(.*?)\s*$`)
)

// alertRules reads the alerts' names and expressions from alerts.yml, whose
// expressions are one line each. Prometheus itself checks the file when it
// loads it.
func alertRules(t *testing.T, path string) []alertRule {
	t.Helper()
	var out []alertRule
	for i, line := range strings.Split(string(readFile(t, path)), "\n") {
		if m := alertLine.FindStringSubmatch(line); m != nil {
			out = append(out, alertRule{name: m[1]})
			continue
		}
		if m := exprLine.FindStringSubmatch(line); m != nil {
			if len(out) == 0 || out[len(out)-1].expr != "" {
				t.Fatalf("%s:%d: expr outside an alert", path, i+1)
			}
			if m[1] == "" || strings.ContainsAny(m[1][:1], "|>'\"") {
				t.Fatalf("%s:%d: write alert expressions on one unquoted line so that this test can read them", path, i+1)
			}
			out[len(out)-1].expr = m[1]
		}
	}
	for _, a := range out {
		if a.expr == "" {
			t.Fatalf("%s: alert %s has no expr", path, a.name)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no alerts found", path)
	}
	return out
}

// trailingComparison matches "<query> <op> <number>" at the end of an
// expression.
var trailingComparison = regexp.MustCompile(`^(.*\S)\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?[0-9.]+(?:e[-+]?[0-9]+)?$`)

// leftOfComparison returns the query of "<query> <op> <number>".
func leftOfComparison(expr string) (string, bool) {
	m := trailingComparison.FindStringSubmatch(strings.TrimSpace(expr))
	if m == nil {
		return "", false
	}
	return m[1], true
}

var (
	stringLiteral = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	braces        = regexp.MustCompile(`\{[^{}]*\}`)
	brackets      = regexp.MustCompile(`\[[^\[\]]*\]`)
	number        = regexp.MustCompile(`\b[0-9][0-9a-zA-Z.]*`)
	grouping      = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	identifier    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*\s*\(?`)
	keywords      = map[string]bool{
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
		"inf": true, "nan": true,
	}
)

// metricNames returns the metric names a PromQL expression selects: what is
// left after string literals, label matchers, ranges and grouping clauses
// are removed, numbers and durations, minus function calls and keywords.
func metricNames(expr string) []string {
	s := stringLiteral.ReplaceAllString(expr, `""`)
	s = braces.ReplaceAllString(s, " ")
	s = brackets.ReplaceAllString(s, " ")
	s = grouping.ReplaceAllString(s, " ")
	s = number.ReplaceAllString(s, " ")
	var out []string
	for _, tok := range identifier.FindAllString(s, -1) {
		if strings.HasSuffix(tok, "(") {
			continue // a function
		}
		tok = strings.TrimSpace(tok)
		if keywords[strings.ToLower(tok)] {
			continue
		}
		out = append(out, tok)
	}
	return out
}

// TestMetricNames checks the extraction the operator-surface test relies on.
func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`histogram_quantile(0.99, sum by (le, event_type) (rate(relay_event_lag_seconds_bucket{job="x", a=~"b|c"}[5m])))`: {"relay_event_lag_seconds_bucket"},
		`max(relay_db_pool_acquired_connections / relay_db_pool_max_connections) > 0.9`:                                   {"relay_db_pool_acquired_connections", "relay_db_pool_max_connections"},
		`sum(rate(x_total{outcome="sum(y)"}[1m])) or vector(0)`:                                                           {"x_total"},
		`absent(relay_webhooks_received_total)`:                                                                           {"relay_webhooks_received_total"},
		`a_total and on() (b == 1) unless ignoring(le) c offset 5m`:                                                       {"a_total", "b", "c"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%s) = %v, want %v", expr, got, want)
		}
	}
	for expr, want := range map[string]string{
		`relay_jobs{state="discarded"} > 0`: `relay_jobs{state="discarded"}`,
		`sum(rate(x[1h])) == 0`:             `sum(rate(x[1h]))`,
		`max(a / b) > 0.9`:                  `max(a / b)`,
		`histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 60`:    `histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))`,
		`sum by (result) (increase(x{result=~"skipped_.*"}[1h])) > bool 1e3`: `sum by (result) (increase(x{result=~"skipped_.*"}[1h]))`,
	} {
		if got, ok := leftOfComparison(expr); !ok || got != want {
			t.Errorf("leftOfComparison(%s) = %q, %v; want %q", expr, got, ok, want)
		}
	}
	if _, ok := leftOfComparison(`absent(x)`); ok {
		t.Error("leftOfComparison(absent(x)) matched")
	}
}
