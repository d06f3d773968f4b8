// The /api form of the vSphere Automation API, as vCenter 7.0 U2 and later
// serve it, for the content library, OVF library item and VM template
// routes capil calls (lua/capil/vsphere/rest.lua's OPS). vcsim 0.24.2 serves
// these only on /rest; with -api the shim stands in for a 7.0 U2+ vCenter
// by translating each /api request into vcsim's /rest form and the answer
// back, following VMware's API reference
// (https://developer.broadcom.com/xapis/vsphere-automation-api/latest/,
// the pages content/api/content/library..., content/api/content/local-library...,
// vcenter/api/vcenter/ovf/library-item..., vcenter/api/vcenter/vm-template/library-items,
// and the vCenter 7.0 U2 OpenAPI description they are made from):
//
//   - paths: /api/content/library/item/ID is /rest/com/vmware/content/library/item/id:ID,
//     ?action=X is ?~action=X, an item's files /api/content/library/item/ID/file
//     are /rest/.../item/file?library_item_id=ID, a session's file add
//     POST /api/content/library/item/update-session/ID/file is
//     /rest/.../updatesession/file/id:ID?~action=add;
//   - bodies: /api takes the operation's structure itself, /rest wraps it
//     ({spec}, {create_spec}, {update_spec}, {file_spec});
//   - client tokens: the client_token query parameter of /api is a body
//     field on /rest;
//   - maps: a JSON object on /api, a list of {key, value} on /rest (the
//     OVF deploy's deployment_spec.network_mappings);
//   - answers: bare on /api ({value} unwrapped), a created id as a bare JSON
//     string with 201, 204 and no body for updates, deletes and session
//     actions; errors as {error_type, messages} (vcsim's {type, value});
//   - upload endpoints: vCenter hands out https://vc/cls/data/...; the
//     shim rewrites vcsim's /rest/com/vmware/cis/data/... to /cls/data/...
//     and serves those uploads from vcsim's.
//
// Any other /api path answers 404 (and every /api path does without -api,
// as vCenter 6.5-7.0 do). The request log names an /api request by its
// route: "POST /api/content/library/item/update-session/*?action=complete".
package main

import (
	"bytes"
	"encoding/json"
	"io/ioutil"
	"net/http"
	"net/http/httptest"
	"strings"
)

const (
	restUploadPath = "/rest/com/vmware/cis/data/"
	apiUploadPath  = "/cls/data/"
)

// apiRoute is one /api operation and its /rest form.
type apiRoute struct {
	method  string
	pattern string   // the /api path; "*" is one segment, the id
	action  string   // the ?action= it takes: "" none, "*" any (passed on)
	rest    string   // the /rest path and query; "%ID%" is the id, "%ACTION%" the action
	wrap    string   // the field the /rest body wraps the /api body in
	token   bool     // client_token: /api query, /rest body field
	maps    []string // dotted paths of maps in the body
	status  int      // the /api success status (204: no body)
}

var apiRoutes = []apiRoute{
	{method: "POST", pattern: "/api/content/library", action: "find", wrap: "spec", status: 200,
		rest: "/rest/com/vmware/content/library?~action=find"},
	{method: "GET", pattern: "/api/content/library/*", status: 200,
		rest: "/rest/com/vmware/content/library/id:%ID%"},
	{method: "POST", pattern: "/api/content/local-library", wrap: "create_spec", token: true, status: 201,
		rest: "/rest/com/vmware/content/local-library"},
	{method: "DELETE", pattern: "/api/content/local-library/*", status: 204,
		rest: "/rest/com/vmware/content/local-library/id:%ID%"},
	{method: "POST", pattern: "/api/content/library/item", action: "find", wrap: "spec", status: 200,
		rest: "/rest/com/vmware/content/library/item?~action=find"},
	{method: "POST", pattern: "/api/content/library/item", wrap: "create_spec", token: true, status: 201,
		rest: "/rest/com/vmware/content/library/item"},
	{method: "GET", pattern: "/api/content/library/item/update-session/*", status: 200,
		rest: "/rest/com/vmware/content/library/item/update-session/id:%ID%"},
	{method: "DELETE", pattern: "/api/content/library/item/update-session/*", status: 204,
		rest: "/rest/com/vmware/content/library/item/update-session/id:%ID%"},
	{method: "POST", pattern: "/api/content/library/item/update-session/*", action: "*", status: 204,
		rest: "/rest/com/vmware/content/library/item/update-session/id:%ID%?~action=%ACTION%"},
	{method: "POST", pattern: "/api/content/library/item/update-session/*/file", wrap: "file_spec", status: 201,
		rest: "/rest/com/vmware/content/library/item/updatesession/file/id:%ID%?~action=add"},
	{method: "POST", pattern: "/api/content/library/item/update-session", wrap: "create_spec", token: true,
		status: 201, rest: "/rest/com/vmware/content/library/item/update-session"},
	{method: "GET", pattern: "/api/content/library/item/*/file", status: 200,
		rest: "/rest/com/vmware/content/library/item/file?library_item_id=%ID%"},
	{method: "GET", pattern: "/api/content/library/item/*", status: 200,
		rest: "/rest/com/vmware/content/library/item/id:%ID%"},
	{method: "PATCH", pattern: "/api/content/library/item/*", wrap: "update_spec", status: 204,
		rest: "/rest/com/vmware/content/library/item/id:%ID%"},
	{method: "DELETE", pattern: "/api/content/library/item/*", status: 204,
		rest: "/rest/com/vmware/content/library/item/id:%ID%"},
	{method: "POST", pattern: "/api/vcenter/ovf/library-item", token: true, status: 201,
		rest: "/rest/com/vmware/vcenter/ovf/library-item"},
	{method: "POST", pattern: "/api/vcenter/ovf/library-item/*", action: "filter", status: 200,
		rest: "/rest/com/vmware/vcenter/ovf/library-item/id:%ID%?~action=filter"},
	{method: "POST", pattern: "/api/vcenter/ovf/library-item/*", action: "deploy", token: true, status: 200,
		maps: []string{"deployment_spec.network_mappings"},
		rest: "/rest/com/vmware/vcenter/ovf/library-item/id:%ID%?~action=deploy"},
	{method: "POST", pattern: "/api/vcenter/vm-template/library-items", wrap: "spec", status: 201,
		rest: "/rest/vcenter/vm-template/library-items"},
}

// findAPIRoute is the route of r and its id, or nil.
func findAPIRoute(r *http.Request) (*apiRoute, string) {
	segs := strings.Split(r.URL.Path, "/")
	action := r.URL.Query().Get("action")
	for i := range apiRoutes {
		rt := &apiRoutes[i]
		if rt.method != r.Method || (rt.action == "" && action != "") || (rt.action == "*" && action == "") ||
			(rt.action != "" && rt.action != "*" && rt.action != action) {
			continue
		}
		pat := strings.Split(rt.pattern, "/")
		if len(pat) != len(segs) {
			continue
		}
		id, ok := "", true
		for j, p := range pat {
			if p == "*" && segs[j] != "" {
				id = segs[j]
			} else if p != segs[j] {
				ok = false
				break
			}
		}
		if ok {
			return rt, id
		}
	}
	return nil, ""
}

// apiCallName is the log name of an /api request: its route's pattern.
func apiCallName(r *http.Request) string {
	name := r.Method + " " + r.URL.Path
	if rt, _ := findAPIRoute(r); rt != nil {
		name = r.Method + " " + rt.pattern
	}
	if a := r.URL.Query().Get("action"); a != "" {
		name += "?action=" + a
	}
	return name
}

// mapToList rewrites the JSON object at dotted path `p` of v as a list of
// {key, value}, the /rest form of a map.
func mapToList(v interface{}, p string) {
	obj, ok := v.(map[string]interface{})
	if !ok {
		return
	}
	parts := strings.SplitN(p, ".", 2)
	if len(parts) == 2 {
		mapToList(obj[parts[0]], parts[1])
		return
	}
	m, ok := obj[p].(map[string]interface{})
	if !ok {
		return
	}
	list := []interface{}{}
	for k, x := range m {
		list = append(list, map[string]interface{}{"key": k, "value": x})
	}
	obj[p] = list
}

// apiError writes an /api error: {error_type, messages}.
func apiError(w http.ResponseWriter, status int, kind, msg string) {
	writeJSON(w, status, map[string]interface{}{"error_type": kind, "messages": []interface{}{
		map[string]interface{}{"args": []string{}, "default_message": msg, "id": "vcsim.shim.api"}}})
}

// serveAPI answers an /api request of apiRoutes through vcsim's /rest form
// (see the file comment); 404 for any other.
func (s *shim) serveAPI(w http.ResponseWriter, r *http.Request) {
	rt, id := findAPIRoute(r)
	if rt == nil {
		apiError(w, http.StatusNotFound, "NOT_FOUND", "no such /api operation in the vcsim shim: "+r.Method+" "+
			r.URL.RequestURI())
		return
	}
	var body interface{}
	if r.Body != nil {
		data, _ := ioutil.ReadAll(r.Body)
		if len(bytes.TrimSpace(data)) > 0 {
			if err := json.Unmarshal(data, &body); err != nil {
				apiError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "the body is not JSON: "+err.Error())
				return
			}
		}
	}
	for _, m := range rt.maps {
		mapToList(body, m)
	}
	if rt.wrap != "" && body != nil {
		body = map[string]interface{}{rt.wrap: body}
	}
	if tok := r.URL.Query().Get("client_token"); rt.token && tok != "" {
		obj, ok := body.(map[string]interface{})
		if !ok {
			obj = map[string]interface{}{}
		}
		obj["client_token"] = tok
		body = obj
	}
	path := strings.Replace(strings.Replace(rt.rest, "%ID%", id, 1), "%ACTION%", r.URL.Query().Get("action"), 1)
	var data []byte
	if body != nil {
		data, _ = json.Marshal(body)
	}
	req := httptest.NewRequest(r.Method, path, bytes.NewReader(data))
	req.Header = r.Header.Clone()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Del("Content-Length")
	req.ContentLength = int64(len(data))
	rec := httptest.NewRecorder()
	s.restRoute(rec, req)
	if rec.Code != http.StatusOK {
		var e struct {
			Type  string `json:"type"`
			Value struct {
				Messages []interface{} `json:"messages"`
			} `json:"value"`
		}
		if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Type == "" {
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
			return
		}
		// com.vmware.vapi.std.errors.not_found -> NOT_FOUND
		kind := strings.ToUpper(e.Type[strings.LastIndex(e.Type, ".")+1:])
		writeJSON(w, rec.Code, map[string]interface{}{"error_type": kind, "messages": e.Value.Messages})
		return
	}
	var wrapped struct {
		Value json.RawMessage `json:"value"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &wrapped)
	value := []byte(wrapped.Value)
	if rt.status == http.StatusNoContent || len(value) == 0 || string(value) == "null" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	// vCenter's upload endpoints are /cls/data/...
	value = bytes.Replace(value, []byte(restUploadPath), []byte(apiUploadPath), -1)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rt.status)
	_, _ = w.Write(value)
}

// serveUpload answers a PUT on /cls/data/... (an /api upload endpoint)
// with vcsim's /rest/com/vmware/cis/data/....
func (s *shim) serveUpload(w http.ResponseWriter, r *http.Request) {
	r2 := r.Clone(r.Context())
	r2.URL.Path = restUploadPath + strings.TrimPrefix(r.URL.Path, apiUploadPath)
	r2.URL.RawPath = ""
	r2.RequestURI = r2.URL.RequestURI()
	s.inner.ServeHTTP(w, r2)
}
