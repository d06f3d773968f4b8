/* C unit test of engine/aux.c: the error triple, long messages, option checks. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "capil.h"

static int failures = 0;
#define CHECK(cond, what) do { if (!(cond)) { fprintf(stderr, "FAIL: %s\n", what); failures++; } } while (0)

static int call_fail(lua_State *L) {
  return capil_fail(L, "HTTP_404", "http.request: GET %s: HTTP %d %.1f", "http://x/y", 404, 1.5);
}

static int call_fail_errno(lua_State *L) {
  return capil_fail_errno(L, ENOENT, "fs.read: %s", "/nope");
}

static int call_long(lua_State *L) {
  char big[3000];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  return capil_fail(L, "EIO", "x: %s", big);
}

static int call_opts(lua_State *L) {
  static const char *const allowed[] = {"url", "timeout", NULL};
  capil_check_options(L, 1, "t.fn", allowed);
  lua_pushinteger(L, capil_opt_integer(L, 1, "t.fn", "timeout", 30));
  return 1;
}

int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);

  lua_pushcfunction(L, call_fail);
  lua_call(L, 0, 3);
  CHECK(lua_isnil(L, -3), "capil_fail pushes nil");
  CHECK(strcmp(lua_tostring(L, -2), "http.request: GET http://x/y: HTTP 404 1.5") == 0, "printf formats");
  CHECK(strcmp(lua_tostring(L, -1), "HTTP_404") == 0, "code token");
  lua_settop(L, 0);

  lua_pushcfunction(L, call_fail_errno);
  lua_call(L, 0, 3);
  CHECK(strcmp(lua_tostring(L, -2), "fs.read: /nope: No such file or directory") == 0, "errno message");
  CHECK(strcmp(lua_tostring(L, -1), "ENOENT") == 0, "errno code");
  lua_settop(L, 0);

  lua_pushcfunction(L, call_long);
  lua_call(L, 0, 3);
  CHECK(lua_rawlen(L, -2) == 3 + 2999, "long messages are not truncated");
  lua_settop(L, 0);

  /* unknown option raises with the function and key named */
  luaL_dostring(L, "return {url='u', tmeout=1}");
  lua_pushcfunction(L, call_opts);
  lua_insert(L, 1);
  CHECK(lua_pcall(L, 1, 1, 0) != LUA_OK, "unknown option raises");
  CHECK(strstr(lua_tostring(L, -1), "t.fn: unknown option 'tmeout'") != NULL, "unknown option message");
  lua_settop(L, 0);

  /* wrong type raises naming the field */
  luaL_dostring(L, "return {timeout='soon'}");
  lua_pushcfunction(L, call_opts);
  lua_insert(L, 1);
  CHECK(lua_pcall(L, 1, 1, 0) != LUA_OK, "wrong type raises");
  CHECK(strstr(lua_tostring(L, -1), "t.fn: option 'timeout' must be an integer, got string") != NULL,
        "wrong type message");
  lua_settop(L, 0);

  /* default when absent */
  luaL_dostring(L, "return {url='u'}");
  lua_pushcfunction(L, call_opts);
  lua_insert(L, 1);
  CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK && lua_tointeger(L, -1) == 30, "default value");

  lua_close(L);
  if (failures) return 1;
  puts("aux: ok");
  return 0;
}
