package main

// Authorisation tests (auth.go, SPEC §3.4, §3.5, §2.6 steps 2–4): the order
// of checks, the roles matrix of every route (ACC-20 … ACC-23), and the mTLS
// CN rule of the agent routes (ACC-31 … ACC-34).

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRoleChecksACC20to23 covers ACC-20 to ACC-23 and the order of §2.6:
// authentication and role come before IDs, bodies and existence.
func TestRoleChecksACC20to23(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	deploy := createTestKey(t, c, ts.url, admin, "deployer", "deploy")
	readonly := createTestKey(t, c, ts.url, admin, "viewer", "readonly")
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", storePath('a', "sys"), true, "ok")), 200, "")
	r := do(t, c, "POST", ts.url+"/api/v1/releases", deploy, map[string]any{"entries": []map[string]any{
		{"hostname": "web-01", "store_path": storePath('b', "sys"), "platform": "x86_64-linux"}}})
	expect(t, r, 201, "")
	var rel struct{ ID string }
	r.json(t, &rel)
	validRollout := map[string]any{"release_id": rel.ID, "strategy": "all_at_once", "target": map[string]any{"hosts": []string{"web-01"}}}

	for _, tc := range []struct {
		acc, name    string
		key          string
		method, path string
		body         any
		ctype        string // overrides the JSON Content-Type when set
		wantStatus   int
		wantErr      string
	}{
		{"ACC-20", "readonly with malformed body", readonly, "POST", "/api/v1/rollouts", `{"release_id":`, "", 403, "deploy or admin role required"},
		{"ACC-20", "readonly with valid body", readonly, "POST", "/api/v1/rollouts", validRollout, "", 403, "deploy or admin role required"},
		{"ACC-20", "readonly with wrong content type", readonly, "POST", "/api/v1/rollouts", `x`, "text/plain", 403, "deploy or admin role required"},
		{"ACC-20", "anonymous with malformed body", "", "POST", "/api/v1/rollouts", `{`, "", 401, "missing API key"},
		{"ACC-20", "deploy with valid body", deploy, "POST", "/api/v1/rollouts", validRollout, "", 201, ""},
		{"ACC-21", "anonymous get unknown rollout", "", "GET", "/api/v1/rollouts/r-ghost", nil, "", 401, "missing API key"},
		{"ACC-21", "anonymous delete unknown release", "", "DELETE", "/api/v1/releases/rel-ghost", nil, "", 401, "missing API key"},
		{"ACC-21", "anonymous invalid rollout id", "", "GET", "/api/v1/rollouts/bad%20id", nil, "", 401, "missing API key"},
		{"ACC-21", "anonymous invalid key id", "", "DELETE", "/api/v1/keys/abc", nil, "", 401, "missing API key"},
		{"ACC-21", "readonly get unknown rollout", readonly, "GET", "/api/v1/rollouts/r-ghost", nil, "", 404, "rollout r-ghost not found"},
		{"ACC-21", "deploy delete release", deploy, "DELETE", "/api/v1/releases/rel-ghost", nil, "", 403, "admin role required"},
		{"ACC-21", "admin delete unknown release", admin, "DELETE", "/api/v1/releases/rel-ghost", nil, "", 404, "release rel-ghost not found"},
		// §2.6 step 2: a known admin path with the wrong method authenticates first.
		{"§2.6", "anonymous GET on bootstrap path", "", "GET", "/api/v1/keys/bootstrap", nil, "", 401, "missing API key"},
		{"§2.6", "anonymous PUT desired-generation", "", "PUT", "/api/v1/machines/web-01/desired-generation", nil, "", 401, "missing API key"},
		{"§2.6", "admin PUT desired-generation", admin, "PUT", "/api/v1/machines/web-01/desired-generation", nil, "", 405, "method not allowed"},
		{"§2.6", "anonymous unknown path", "", "GET", "/api/v1/nope", nil, "", 404, "not found"},
		// §2.6: the role check (step 4) comes before path ids (step 5).
		{"§2.6", "readonly revoke with a bad key id", readonly, "DELETE", "/api/v1/keys/abc", nil, "", 403, "admin role required"},
		{"§2.6", "deploy lifecycle with a bad machine id", deploy, "PATCH", "/api/v1/machines/bad%20id/lifecycle", `{`, "", 403, "admin role required"},
		{"§2.6", "admin revoke with a bad key id", admin, "DELETE", "/api/v1/keys/abc", nil, "", 400, "invalid key id"},
		{"ACC-22", "deploy delete existing release", deploy, "DELETE", "/api/v1/releases/" + rel.ID, nil, "", 403, "admin role required"},
		{"ACC-22", "deploy register", deploy, "POST", "/api/v1/machines/x/register", `{}`, "", 403, "admin role required"},
		{"ACC-22", "deploy list keys", deploy, "GET", "/api/v1/keys", nil, "", 403, "admin role required"},
		{"ACC-23", "readonly machines", readonly, "GET", "/api/v1/machines", nil, "", 200, ""},
		{"ACC-23", "readonly releases", readonly, "GET", "/api/v1/releases", nil, "", 200, ""},
		{"ACC-23", "readonly rollouts", readonly, "GET", "/api/v1/rollouts", nil, "", 200, ""},
		{"ACC-23", "readonly audit", readonly, "GET", "/api/v1/audit", nil, "", 200, ""},
		{"ACC-23", "readonly audit export", readonly, "GET", "/api/v1/audit/export", nil, "", 200, ""},
	} {
		t.Run(tc.acc+" "+tc.name, func(t *testing.T) {
			var r response
			if tc.ctype != "" {
				hdr := map[string]string{"Content-Type": tc.ctype}
				if tc.key != "" {
					hdr["Authorization"] = "Bearer " + tc.key
				}
				r = authSend(t, c, tc.method, ts.url+tc.path, hdr, tc.body.(string))
			} else {
				r = do(t, c, tc.method, ts.url+tc.path, tc.key, tc.body)
			}
			expect(t, r, tc.wantStatus, tc.wantErr)
			if tc.wantStatus == 401 && r.header.Get("WWW-Authenticate") != `Bearer realm="nixfleet"` {
				t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
			if tc.wantStatus == 405 && r.header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
		})
	}
}

// authRolesMatrix is SPEC §3.4, copied with the backticks removed and the
// columns aligned. TestRolesMatrix checks it against SPEC.md when the spec is
// at hand, and against the server's route table always.
const authRolesMatrix = `
| #  | Route                                           | public                       | agent (mTLS CN) | readonly | deploy | admin |
|--- |---                                              |---                           |---              |---       |---     |---    |
| 1  | GET /health                                     | ✓                            |                 |          |        |       |
| 2  | GET /metrics                                    | ✓                            |                 |          |        |       |
| 3  | POST /api/v1/keys/bootstrap                     | ✓ (only while no key exists) |                 |          |        |       |
| 4  | GET /api/v1/machines/{id}/desired-generation    |                              | ✓               |          |        |       |
| 5  | POST /api/v1/machines/{id}/report               |                              | ✓               |          |        |       |
| 6  | GET /api/v1/machines                            |                              |                 | ✓        | ✓      | ✓     |
| 7  | POST /api/v1/machines/{id}/register             |                              |                 | ✗        | ✗      | ✓     |
| 8  | PATCH /api/v1/machines/{id}/lifecycle           |                              |                 | ✗        | ✗      | ✓     |
| 9  | PUT /api/v1/machines/{id}/tags                  |                              |                 | ✗        | ✗      | ✓     |
| 10 | DELETE /api/v1/machines/{id}/desired-generation |                              |                 | ✗        | ✗      | ✓     |
| 11 | POST /api/v1/machines/{id}/notify-deploy        |                              |                 | ✗        | ✓      | ✓     |
| 12 | POST /api/v1/releases                           |                              |                 | ✗        | ✓      | ✓     |
| 13 | GET /api/v1/releases                            |                              |                 | ✓        | ✓      | ✓     |
| 14 | GET /api/v1/releases/{id}                       |                              |                 | ✓        | ✓      | ✓     |
| 15 | DELETE /api/v1/releases/{id}                    |                              |                 | ✗        | ✗      | ✓     |
| 16 | GET /api/v1/releases/{id}/diff/{other_id}       |                              |                 | ✓        | ✓      | ✓     |
| 17 | POST /api/v1/rollouts                           |                              |                 | ✗        | ✓      | ✓     |
| 18 | GET /api/v1/rollouts                            |                              |                 | ✓        | ✓      | ✓     |
| 19 | GET /api/v1/rollouts/{id}                       |                              |                 | ✓        | ✓      | ✓     |
| 20 | DELETE /api/v1/rollouts/{id}                    |                              |                 | ✗        | ✗      | ✓     |
| 21 | POST /api/v1/rollouts/{id}/pause                |                              |                 | ✗        | ✓      | ✓     |
| 22 | POST /api/v1/rollouts/{id}/resume               |                              |                 | ✗        | ✓      | ✓     |
| 23 | POST /api/v1/rollouts/{id}/cancel               |                              |                 | ✗        | ✓      | ✓     |
| 24 | GET /api/v1/audit                               |                              |                 | ✓        | ✓      | ✓     |
| 25 | GET /api/v1/audit/export                        |                              |                 | ✓        | ✓      | ✓     |
| 26 | POST /api/v1/keys                               |                              |                 | ✗        | ✗      | ✓     |
| 27 | GET /api/v1/keys                                |                              |                 | ✗        | ✗      | ✓     |
| 28 | DELETE /api/v1/keys/{id}                        |                              |                 | ✗        | ✗      | ✓     |
`

// authRolesExtra are the routes added after SPEC.md §3.4, by issue, in the
// same format; TestRolesMatrix checks them like the matrix's own rows.
const authRolesExtra = `
| #  | Route                                           | public                       | agent (mTLS CN) | readonly | deploy | admin |
|--- |---                                              |---                           |---              |---       |---     |---    |
| 29 | GET /api/v1/audit/head                          |                              |                 | ✓        | ✓      | ✓     |
| 30 | GET /api/v1/machines/{id}                       |                              |                 | ✓        | ✓      | ✓     |
| 31 | GET /api/v1/events                              |                              |                 | ✓        | ✓      | ✓     |
| 32 | GET /ui                                         | ✓                            |                 |          |        |       |
| 33 | GET /ui/                                        | ✓                            |                 |          |        |       |
`

// authParseTable returns the cells of the body rows of the first
// markdown table in text (header and separator rows skipped), trimmed, with
// backticks removed.
func authParseTable(text string) [][]string {
	var rows [][]string
	started := false
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if started {
				break
			}
			continue
		}
		started = true
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(strings.ReplaceAll(cells[i], "`", ""))
		}
		if cells[0] == "#" || strings.HasPrefix(cells[0], "---") {
			continue
		}
		rows = append(rows, cells)
	}
	return rows
}

// authMatrixCaller is one column of callers in TestRolesMatrix.
type authMatrixCaller struct {
	name string
	key  string
	role string // readonly, deploy or admin for a valid key; "" otherwise
	deny string // for anonymous, revoked and expired: the 401 message
}

// TestRolesMatrix covers §3.4, §3.6 and ACC-20–23 on every route: each of
// the 28 routes of the spec and the 3 of issue 16 is called by anonymous, readonly, deploy, admin, a revoked
// admin key and an expired admin key, and the answer must be exactly 401,
// exactly 403 (with the role message), or allowed (neither 401 nor 403: the
// handler ran). Public and agent routes never look at Authorization.
func TestRolesMatrix(t *testing.T) {
	rows := authParseTable(authRolesMatrix)
	if spec, err := os.ReadFile(filepath.Join("..", "shared", "SPEC.md")); err == nil {
		_, section, ok := strings.Cut(string(spec), "### 3.4 Roles matrix")
		if !ok {
			t.Fatal("SPEC.md has no §3.4 Roles matrix")
		}
		want := authParseTable(section)
		if fmt.Sprint(want) != fmt.Sprint(rows) {
			t.Fatalf("authRolesMatrix differs from SPEC.md §3.4:\nspec: %q\ntest: %q", want, rows)
		}
	} else {
		t.Logf("SPEC.md not available (%v): using the copy in the test", err)
	}
	specRows := len(rows)
	rows = append(rows, authParseTable(authRolesExtra)...)

	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")

	// The server's route table has exactly the routes of the matrix and the
	// routes added since.
	var serverRoutes, matrixRoutes []string
	serverRoutes = append(serverRoutes, ts.srv.patterns...)
	for _, row := range rows {
		matrixRoutes = append(matrixRoutes, row[1])
	}
	slices.Sort(serverRoutes)
	slices.Sort(matrixRoutes)
	if specRows != 28 || fmt.Sprint(serverRoutes) != fmt.Sprint(matrixRoutes) {
		t.Fatalf("routes differ:\nserver: %q\nmatrix: %q", serverRoutes, matrixRoutes)
	}

	// Fixtures: keys of every kind, machines, releases and a rollout, so that
	// every allowed call reaches a handler that can do its work.
	admin := bootstrapKey(t, c, ts.url)
	readonly := createTestKey(t, c, ts.url, admin, "matrix-readonly", "readonly")
	deploy := createTestKey(t, c, ts.url, admin, "matrix-deploy", "deploy")
	createTestKey(t, c, ts.url, admin, "matrix-spare", "readonly")
	revoked := createTestKey(t, c, ts.url, admin, "matrix-revoked", "admin")
	r := do(t, c, "POST", ts.url+"/api/v1/keys", admin, map[string]any{"name": "matrix-expired", "role": "admin",
		"expires_at": ts.clock.now().Add(time.Minute).Format(time.RFC3339Nano)})
	expect(t, r, 201, "")
	var expiredKey keyCreated
	r.json(t, &expiredKey)
	var keys []keyInfo
	do(t, c, "GET", ts.url+"/api/v1/keys", admin, nil).json(t, &keys)
	ids := map[string]int64{}
	for _, k := range keys {
		ids[k.Name] = k.ID
	}
	expect(t, do(t, c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, ids["matrix-revoked"]), admin, nil), 204, "")
	ts.clock.advance(2 * time.Minute)

	for _, id := range []string{"web-01", "web-02"} {
		expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/"+id+"/report", "", reportBody(id, storePath('a', "sys"), true, "ok")), 200, "")
	}
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-03/register", admin, `{"tags":["web"]}`), 201, "")
	newRelease := func() string {
		r := do(t, c, "POST", ts.url+"/api/v1/releases", admin, map[string]any{"entries": []map[string]any{
			{"hostname": "web-01", "store_path": storePath('c', "sys"), "platform": "x86_64-linux"},
			{"hostname": "web-02", "store_path": storePath('d', "sys"), "platform": "x86_64-linux"}}})
		expect(t, r, 201, "")
		var rel struct{ ID string }
		r.json(t, &rel)
		return rel.ID
	}
	rel1, rel2, rel3 := newRelease(), newRelease(), newRelease()
	r = do(t, c, "POST", ts.url+"/api/v1/rollouts", admin, map[string]any{"release_id": rel1, "strategy": "all_at_once",
		"target": map[string]any{"hosts": []string{"web-01"}}})
	expect(t, r, 201, "")
	var ro createRolloutResponse
	r.json(t, &ro)

	// One valid request per route, and the statuses its handler may give an
	// allowed caller (a later caller may find the work already done).
	type call struct {
		path    string
		body    any
		allowed []int
	}
	calls := map[string]call{
		"GET /health":                 {"/health", nil, []int{200}},
		"GET /metrics":                {"/metrics", nil, []int{200}},
		"POST /api/v1/keys/bootstrap": {"/api/v1/keys/bootstrap", `{"name":"again"}`, []int{409}},
		"GET /api/v1/machines/{id}/desired-generation": {"/api/v1/machines/web-01/desired-generation", nil, []int{404}},
		"POST /api/v1/machines/{id}/report": {"/api/v1/machines/web-02/report",
			reportBody("web-02", storePath('a', "sys"), true, "ok"), []int{200}},
		"GET /api/v1/machines":                            {"/api/v1/machines", nil, []int{200}},
		"GET /api/v1/machines/{id}":                       {"/api/v1/machines/web-01", nil, []int{200}},
		"POST /api/v1/machines/{id}/register":             {"/api/v1/machines/web-04/register", `{"tags":["db"]}`, []int{201}},
		"PATCH /api/v1/machines/{id}/lifecycle":           {"/api/v1/machines/web-03/lifecycle", `{"lifecycle":"maintenance"}`, []int{200}},
		"PUT /api/v1/machines/{id}/tags":                  {"/api/v1/machines/web-03/tags", `{"tags":["web","eu"]}`, []int{200}},
		"DELETE /api/v1/machines/{id}/desired-generation": {"/api/v1/machines/web-03/desired-generation", nil, []int{204}},
		"POST /api/v1/machines/{id}/notify-deploy": {"/api/v1/machines/web-03/notify-deploy",
			map[string]any{"store_path": storePath('g', "sys")}, []int{200}},
		"POST /api/v1/releases": {"/api/v1/releases", map[string]any{"entries": []map[string]any{
			{"hostname": "web-02", "store_path": storePath('f', "sys"), "platform": "x86_64-linux"}}}, []int{201}},
		"GET /api/v1/releases":                      {"/api/v1/releases", nil, []int{200}},
		"GET /api/v1/releases/{id}":                 {"/api/v1/releases/" + rel1, nil, []int{200}},
		"DELETE /api/v1/releases/{id}":              {"/api/v1/releases/" + rel3, nil, []int{204}},
		"GET /api/v1/releases/{id}/diff/{other_id}": {"/api/v1/releases/" + rel1 + "/diff/" + rel2, nil, []int{200}},
		"POST /api/v1/rollouts": {"/api/v1/rollouts", map[string]any{"release_id": rel2, "strategy": "all_at_once",
			"target": map[string]any{"hosts": []string{"web-02"}}}, []int{201, 409}},
		"GET /api/v1/rollouts":              {"/api/v1/rollouts", nil, []int{200}},
		"GET /api/v1/rollouts/{id}":         {"/api/v1/rollouts/" + ro.RolloutID, nil, []int{200}},
		"DELETE /api/v1/rollouts/{id}":      {"/api/v1/rollouts/" + ro.RolloutID, nil, []int{409}},
		"POST /api/v1/rollouts/{id}/pause":  {"/api/v1/rollouts/" + ro.RolloutID + "/pause", nil, []int{200, 409}},
		"POST /api/v1/rollouts/{id}/resume": {"/api/v1/rollouts/" + ro.RolloutID + "/resume", nil, []int{200, 409}},
		"POST /api/v1/rollouts/{id}/cancel": {"/api/v1/rollouts/" + ro.RolloutID + "/cancel", nil, []int{200, 409}},
		"GET /api/v1/audit":                 {"/api/v1/audit", nil, []int{200}},
		"GET /api/v1/audit/export":          {"/api/v1/audit/export", nil, []int{200}},
		"GET /api/v1/audit/head":            {"/api/v1/audit/head", nil, []int{200}},
		"POST /api/v1/keys":                 {"/api/v1/keys", `{"name":"matrix-new","role":"readonly"}`, []int{201}},
		"GET /api/v1/keys":                  {"/api/v1/keys", nil, []int{200}},
		"DELETE /api/v1/keys/{id}":          {fmt.Sprintf("/api/v1/keys/%d", ids["matrix-spare"]), nil, []int{204}},
		// A valid request would stream until the client leaves: an invalid
		// filter shows that the handler ran, after authentication.
		"GET /api/v1/events": {"/api/v1/events?types=none", nil, []int{400}},
		"GET /ui":            {"/ui", nil, []int{200}}, // the client follows the redirect to /ui/
		"GET /ui/":           {"/ui/", nil, []int{200}},
	}
	callers := []authMatrixCaller{
		{name: "anonymous", deny: "missing API key"},
		{name: "readonly", key: readonly, role: "readonly"},
		{name: "deploy", key: deploy, role: "deploy"},
		{name: "admin", key: admin, role: "admin"},
		{name: "revoked key", key: revoked, deny: "API key revoked"},
		{name: "expired key", key: expiredKey.Key, deny: "API key expired"},
	}

	for _, row := range rows {
		num, route, public, agentCol := row[0], row[1], row[2], row[3]
		roleCell := map[string]string{"readonly": row[4], "deploy": row[5], "admin": row[6]}
		cl, ok := calls[route]
		if !ok {
			t.Fatalf("no request for route %s", route)
		}
		method, _, _ := strings.Cut(route, " ")
		open := strings.HasPrefix(public, "✓") || strings.HasPrefix(agentCol, "✓")
		roleMsg := "admin role required"
		if roleCell["deploy"] == "✓" {
			roleMsg = "deploy or admin role required"
		}
		t.Run(num+" "+route, func(t *testing.T) {
			for _, who := range callers {
				t.Run(who.name, func(t *testing.T) {
					r := do(t, c, method, ts.url+cl.path, who.key, cl.body)
					switch {
					case open:
						// Routes 1–5 never look at Authorization.
					case who.role == "":
						authExpect401(t, r, who.deny)
						return
					case roleCell[who.role] == "✗":
						expect(t, r, 403, roleMsg)
						return
					case roleCell[who.role] != "✓":
						t.Fatalf("matrix cell %q for %s", roleCell[who.role], who.role)
					}
					if r.status == 401 || r.status == 403 || !slices.Contains(cl.allowed, r.status) {
						t.Fatalf("allowed caller got %d, want one of %v: %s", r.status, cl.allowed, r.body)
					}
				})
			}
		})
	}
}

// TestAgentCNRuleACC31to34 covers ACC-31, ACC-33 and ACC-34 and the
// byte-for-byte CN comparison of §3.5 (ACC-32's refusals are in
// TestMTLSMatrix).
func TestAgentCNRuleACC31to34(t *testing.T) {
	ts := newTestServer(t, testServerOptions{mode: "mtls", bootstrapCNs: []string{"operator"}})
	op, web01 := ts.client("operator"), ts.client("web-01")
	admin := bootstrapKey(t, op, ts.url)
	desired := ts.url + "/api/v1/machines/web-01/desired-generation"

	// ACC-31: the machine's own routes are never 403.
	expect(t, do(t, web01, "GET", desired, "", nil), 404, "no desired generation")
	expect(t, do(t, web01, "POST", ts.url+"/api/v1/machines/web-01/report", "",
		reportBody("web-01", storePath('a', "sys"), true, "up-to-date")), 200, "")
	expect(t, do(t, web01, "GET", desired, "", nil), 404, "no desired generation")
	target := storePath('b', "sys")
	expect(t, do(t, op, "POST", ts.url+"/api/v1/machines/web-01/notify-deploy", admin, map[string]any{"store_path": target}), 200, "")
	r := do(t, web01, "GET", desired, "", nil)
	expect(t, r, 200, "")
	var dg desiredGeneration
	r.json(t, &dg)
	if dg.Hash != target {
		t.Fatalf("desired %+v, want %s", dg, target)
	}
	// The CN is compared with the decoded path id, byte for byte.
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines/web%2D01/desired-generation", "", nil), 200, "")
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines/WEB-01/desired-generation", "", nil), 403,
		"client certificate CN does not match machine id")
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines/web-01.x/desired-generation", "", nil), 403,
		"client certificate CN does not match machine id")

	// ACC-33: admin routes need the key, and do not check the CN.
	ms := listMachinesT(t, op, ts.url, admin, "")
	if len(ms) != 1 || ms[0].MachineID != "web-01" {
		t.Fatalf("machines %+v", ms)
	}
	authExpect401(t, do(t, web01, "GET", ts.url+"/api/v1/machines", "", nil), "missing API key")
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines", admin, nil), 200, "")
	expect(t, do(t, ts.client("web-02"), "GET", ts.url+"/api/v1/machines", admin, nil), 200, "")

	// ACC-34: without a verified certificate (plain and TLS modes) the agent
	// routes are open for any machine id.
	for _, mode := range []string{"plain", "tls"} {
		t.Run("ACC-34 "+mode, func(t *testing.T) {
			ts := newTestServer(t, testServerOptions{mode: mode})
			c := ts.client("")
			for _, id := range []string{"web-01", "db-7", "anything.at_all"} {
				expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/"+id+"/report", "",
					reportBody(id, storePath('a', "sys"), true, "ok")), 200, "")
				expect(t, do(t, c, "GET", ts.url+"/api/v1/machines/"+id+"/desired-generation", "", nil), 404, "no desired generation")
			}
			if mode == "tls" {
				// A certificate offered by the client is not even requested.
				expect(t, do(t, ts.client("web-01"), "POST", ts.url+"/api/v1/machines/web-02/report", "",
					reportBody("web-02", storePath('a', "sys"), true, "ok")), 200, "")
			}
		})
	}
}

// TestAgentRoutesMTLS covers ACC-31, ACC-32 and ACC-33 and the order of checks of §4.5 and §4.6 in mTLS
// mode: the CN check (403) comes before the ID rule (400) and the lookup, a
// CN-rejected report is not counted as a report, and the own CN works.
func TestAgentRoutesMTLS(t *testing.T) {
	ts := newTestServer(t, testServerOptions{mode: "mtls", bootstrapCNs: []string{"operator"}})
	op, web01 := ts.client("operator"), ts.client("web-01")
	A := bootstrapKey(t, op, ts.url)
	base := ts.url + "/api/v1/machines/"
	p1 := storePath('a', "sys")

	expect(t, do(t, web01, "GET", base+"web-01/desired-generation", "", nil), 404, "no desired generation")
	for _, path := range []string{"web-02", "web%2001", strings.Repeat("a", 129)} {
		expect(t, do(t, web01, "GET", base+path+"/desired-generation", "", nil), 403, "client certificate CN does not match machine id")
	}
	before := dbFingerprint(t, ts)
	rej := metricValue(t, op, ts.url, reportsRejected)
	cnFail := metricValue(t, op, ts.url, `nixfleet_auth_failures_total{reason="cn_mismatch"}`)
	expect(t, do(t, web01, "POST", base+"web-02/report", "", reportBody("web-02", p1, true, "up-to-date")), 403,
		"client certificate CN does not match machine id")
	expect(t, do(t, web01, "POST", base+"web%2001/report", "", "garbage"), 403, "client certificate CN does not match machine id")
	if after := dbFingerprint(t, ts); after != before {
		t.Fatalf("CN-rejected reports changed the database:\n%s\n%s", before, after)
	}
	if got := metricValue(t, op, ts.url, reportsRejected); got != rej {
		t.Errorf("CN-rejected reports counted as rejected reports: %v -> %v", rej, got)
	}
	if got := metricValue(t, op, ts.url, `nixfleet_auth_failures_total{reason="cn_mismatch"}`); got != cnFail+2 {
		t.Errorf("cn_mismatch %v -> %v, want +2", cnFail, got)
	}
	expect(t, do(t, web01, "POST", base+"web-01/report", "", "{"), 400, "")
	expect(t, do(t, web01, "POST", base+"web-01/report", "", reportBody("web-01", p1, true, "up-to-date")), 200, "")
	ms := listMachinesT(t, op, ts.url, A, "")
	if len(ms) != 1 || ms[0].MachineID != "web-01" || ms[0].CurrentGeneration != p1 {
		t.Fatalf("machines %+v", ms)
	}
	// Admin routes need the key too; the CN is not checked there.
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines", "", nil), 401, "missing API key")
}
