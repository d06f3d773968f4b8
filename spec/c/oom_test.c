/*
** oom_test.c — capil.core.json and capil.core.xml under memory exhaustion:
** the same work is run with an allocator that fails after 0, 1, 2, ...
** allocations, until it completes. Each run must either succeed or fail with
** Lua's "not enough memory" — never crash, never longjmp across expat or
** jansson (the sanitizer build also checks that nothing leaks).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_capil_core_json(lua_State *L);
int luaopen_capil_core_xml(lua_State *L);
int luaopen_capil_core_hash(lua_State *L);

static int limited = 0;
static long budget = 0, used = 0;

static void *alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) { free(ptr); return NULL; }
  if (limited && (ptr == NULL || nsize > osize)) {
    if (budget-- <= 0) return NULL;
    used++;
  }
  return realloc(ptr, nsize);
}

static const char *WORK =
  "local json, xml, hash = ...\n"
  "local doc = [=[<?xml version='1.0'?><e:Envelope xmlns:e='urn:e' xmlns:x='urn:x'>"
  "<e:Body><r xmlns='urn:v'><v x:type='x:T' a='1'>text &amp; more<![CDATA[ cdata ]]></v>"
  "<w/>tail</r></e:Body></e:Envelope>]=]\n"
  "local root = assert(xml.parse(doc))\n"
  "assert(root[1][1][1].attrs['{urn:x}type'] == 'x:T')\n"
  "assert(not xml.parse('<!DOCTYPE a [<!ENTITY b \"c\">]><a>&b;</a>'))\n"
  "assert(not xml.parse('<a><b></a>'))\n"
  "local v = assert(json.decode('{\"a\": [1, 2.5, \"s\", null, true, {\"b\": []}], "
  "\"big\": 123456789012345678901234567890}'))\n"
  "local s = json.encode(v, {sort_keys = true, indent = 2})\n"
  "assert(not pcall(json.encode, {f = print}))\n"
  "assert(not json.decode('[1, 99999999999999999999, x]'))\n"
  "assert(xml.escape('a & <b>') == 'a &amp; &lt;b&gt;')\n"
  "assert(hash.base64_decode(hash.base64_encode(s)) == s)\n"
  "assert(hash.hex_decode(hash.hex_encode(s)) == s)\n"
  "return s\n";

/* Runs WORK with `limit` allocations allowed (-1: unlimited); returns 1 when
** it completed, 0 when it failed for lack of memory, exits on anything else. */
static int run(long limit) {
  lua_State *L = lua_newstate(alloc, NULL);
  if (!L) { fprintf(stderr, "cannot create a Lua state\n"); exit(2); }
  luaL_openlibs(L);
  luaL_requiref(L, "capil.core.json", luaopen_capil_core_json, 0);
  luaL_requiref(L, "capil.core.xml", luaopen_capil_core_xml, 0);
  luaL_requiref(L, "capil.core.hash", luaopen_capil_core_hash, 0);
  if (luaL_loadstring(L, WORK) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    exit(2);
  }
  lua_rotate(L, -4, 1); /* the chunk below the three modules */
  used = 0;
  budget = limit;
  limited = limit >= 0;
  int st = lua_pcall(L, 3, 1, 0);
  limited = 0;
  int ok = st == LUA_OK;
  if (!ok) {
    const char *msg = lua_tostring(L, -1);
    if (st != LUA_ERRMEM && !(msg && strstr(msg, "not enough memory"))) {
      fprintf(stderr, "FAIL with %ld allocations: status %d: %s\n", limit, st, msg ? msg : "?");
      exit(1);
    }
    if (getenv("OOM_TEST_VERBOSE")) fprintf(stderr, "%ld: %s\n", limit, msg ? msg : "?");
  }
  lua_close(L);
  return ok;
}

int main(void) {
  if (!run(-1)) { fprintf(stderr, "FAIL: the work does not succeed with unlimited memory\n"); return 1; }
  long n = 0;
  while (!run(n)) {
    n++;
    if (n > 100000) { fprintf(stderr, "FAIL: never completes\n"); return 1; }
  }
  printf("oom: completed with %ld allocations, every smaller budget failed cleanly\n", n);
  return 0;
}
