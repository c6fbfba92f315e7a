package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testkit"
)

// TestWorkspaceSecretChangeReachesEveryReplica adds a workspace's secret
// through one running replica's admin API and requires a second running
// replica to verify with it within 5 s, and to stop once it is removed;
// a relay started with a key that cannot read the stored secrets refuses
// to start.
func TestWorkspaceSecretChangeReachesEveryReplica(t *testing.T) {
	const key = "cmVsYXktY21kLXRlc3Qtc2VjcmV0cy1rZXktMDAwMDE="
	const token = "relay-test-admin-token-0001"
	const wsSecret = "polar_whs_replica_test_workspace_1"
	one := startRelay(t, map[string]string{"RELAY_SECRETS_KEY": key, "RELAY_ADMIN_TOKEN": token})
	two := startRelay(t, map[string]string{"RELAY_SECRETS_KEY": key, "RELAY_ADMIN_TOKEN": token, "DATABASE_URL": one.env["DATABASE_URL"]})
	shop := testkit.SeedShop(t, one.pool, testkit.ShopOptions{})
	body := testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_replicas"), nil)
	post := func(id string) int {
		code, err := testkit.Post(http.DefaultClient, two.hook+"/"+shop.WS, wsSecret, id, body)
		if err != nil {
			t.Errorf("post: %v", err)
		}
		return code
	}
	within5s := func(what string, want int) {
		t.Helper()
		start := time.Now()
		for code := post("msg_replicas"); code != want; code = post("msg_replicas") {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s: the other replica still answers %d after 5 s, want %d", what, code, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("%s: honoured by the other replica after %v", what, time.Since(start).Round(time.Millisecond))
	}

	if code := post("msg_replicas"); code != http.StatusUnauthorized {
		t.Fatalf("before any secret: status %d, want 401", code)
	}
	code, out, _ := doReq(t, http.MethodPost, one.admin+"/admin/api/endpoints", bearer(token),
		`{"workspace":"`+shop.WS+`","environment":"production","secret":"`+wsSecret+`"}`)
	if code != http.StatusCreated || strings.Contains(out, wsSecret) {
		t.Fatalf("add through replica one: %d %s", code, out)
	}
	var added struct{ ID string }
	if err := json.Unmarshal([]byte(out), &added); err != nil || added.ID == "" {
		t.Fatalf("add answered %s: %v", out, err)
	}
	within5s("added", http.StatusOK)
	if code, out, _ := doReq(t, http.MethodDelete, one.admin+"/admin/api/endpoints/"+added.ID, bearer(token), ""); code != http.StatusOK {
		t.Fatalf("remove through replica one: %d %s", code, out)
	}
	within5s("removed", http.StatusUnauthorized)

	// Stored secrets and a key that cannot read them: no start.
	if code, out, _ := doReq(t, http.MethodPost, one.admin+"/admin/api/endpoints", bearer(token),
		`{"workspace":"`+shop.WS+`","environment":"sandbox","secret":"`+wsSecret+`"}`); code != http.StatusCreated {
		t.Fatalf("add: %d %s", code, out)
	}
	for name, env := range map[string]map[string]string{
		"wrong key": {"RELAY_SECRETS_KEY": "b3RoZXItY21kLXRlc3Qtc2VjcmV0cy1rZXktMDAwMDE="},
		"no key":    {},
	} {
		env["DATABASE_URL"] = one.env["DATABASE_URL"]
		env["POLAR_WEBHOOK_SECRET"] = testSecret
		env["RELAY_HTTP_ADDR"], env["RELAY_ADMIN_ADDR"] = testkit.FreeAddr(t), testkit.FreeAddr(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := run(ctx, []string{"serve"}, envFunc(env), &testkit.SyncBuffer{})
		cancel()
		want := map[string]string{"wrong key": "RELAY_SECRETS_KEY cannot decrypt endpoint secret", "no key": "no secrets key configured"}[name]
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), wsSecret) {
			t.Errorf("%s: serve = %v, want a refusal to start saying %q", name, err, want)
		}
	}
}
