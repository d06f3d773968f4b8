/*
** aux.c — helpers every C module uses: the error triple and option tables.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "capil.h"

/* ====================================================================== */
/* Errors                                                                 */
/* ====================================================================== */

/* Pushes a printf-formatted string (full printf syntax, unlike lua_pushfstring). */
static void push_vformat(lua_State *L, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  char small[512];
  int n = vsnprintf(small, sizeof small, fmt, ap);
  if (n < 0) {
    lua_pushstring(L, fmt);
  } else if ((size_t)n < sizeof small) {
    lua_pushlstring(L, small, (size_t)n);
  } else {
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)n + 1);
    vsnprintf(p, (size_t)n + 1, fmt, ap2);
    luaL_pushresultsize(&b, (size_t)n);
  }
  va_end(ap2);
}

int capil_fail(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  va_start(ap, fmt);
  push_vformat(L, fmt, ap);
  va_end(ap);
  lua_pushstring(L, code);
  return 3;
}

const char *capil_errno_code(int err) {
  switch (err) {
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EEXIST: return "EEXIST";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case ENOTEMPTY: return "ENOTEMPTY";
    case ENOSPC: return "ENOSPC";
    case EROFS: return "EROFS";
    case EXDEV: return "EXDEV";
    case EINVAL: return "EINVAL";
    case EINTR: return "EINTR";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case EPIPE: return "EPIPE";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    case ESRCH: return "ESRCH";
    case ECHILD: return "ECHILD";
    case E2BIG: return "E2BIG";
    case ENOEXEC: return "ENOEXEC";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ELOOP: return "ELOOP";
    case EIO: return "EIO";
    case ERANGE: return "ERANGE";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENETUNREACH: return "ENETUNREACH";
    case ECONNABORTED: return "ECONNABORTED";
    case EADDRINUSE: return "EADDRINUSE";
    default: return "EIO";
  }
}

int capil_fail_errno(lua_State *L, int err, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  va_start(ap, fmt);
  push_vformat(L, fmt, ap);
  va_end(ap);
  lua_pushfstring(L, ": %s", strerror(err));
  lua_concat(L, 2);
  lua_pushstring(L, capil_errno_code(err));
  return 3;
}

/* ====================================================================== */
/* Option tables                                                          */
/* ====================================================================== */

void capil_check_options(lua_State *L, int idx, const char *fn,
                         const char *const allowed[]) {
  idx = lua_absindex(L, idx);
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "%s: option keys must be strings, got a %s key", fn,
                 luaL_typename(L, -1));
    const char *key = lua_tostring(L, -1);
    int known = 0;
    for (const char *const *a = allowed; *a; a++)
      if (strcmp(*a, key) == 0) { known = 1; break; }
    if (!known) luaL_error(L, "%s: unknown option '%s'", fn, key);
  }
}

int capil_opt_field(lua_State *L, int idx, const char *key) {
  if (lua_type(L, idx) != LUA_TTABLE) { lua_pushnil(L); return LUA_TNIL; }
  return lua_getfield(L, idx, key);
}

static void opt_type_error(lua_State *L, const char *fn, const char *key,
                           const char *want) {
  luaL_error(L, "%s: option '%s' must be %s, got %s", fn, key, want,
             luaL_typename(L, -1));
}

const char *capil_opt_string(lua_State *L, int idx, const char *fn,
                             const char *key, const char *def, size_t *len) {
  idx = lua_absindex(L, idx);
  int t = capil_opt_field(L, idx, key);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    if (len) *len = def ? strlen(def) : 0;
    return def;
  }
  if (t != LUA_TSTRING) opt_type_error(L, fn, key, "a string");
  const char *s = lua_tolstring(L, -1, len);
  lua_pop(L, 1); /* still referenced by the table */
  return s;
}

lua_Integer capil_opt_integer(lua_State *L, int idx, const char *fn,
                              const char *key, lua_Integer def) {
  int t = capil_opt_field(L, idx, key);
  lua_Integer v = def;
  if (t != LUA_TNIL) {
    int isnum = 0;
    v = lua_tointegerx(L, -1, &isnum);
    if (t != LUA_TNUMBER || !isnum) opt_type_error(L, fn, key, "an integer");
  }
  lua_pop(L, 1);
  return v;
}

lua_Number capil_opt_number(lua_State *L, int idx, const char *fn,
                            const char *key, lua_Number def) {
  int t = capil_opt_field(L, idx, key);
  lua_Number v = def;
  if (t != LUA_TNIL) {
    if (t != LUA_TNUMBER) opt_type_error(L, fn, key, "a number");
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

int capil_opt_boolean(lua_State *L, int idx, const char *fn,
                      const char *key, int def) {
  int t = capil_opt_field(L, idx, key);
  int v = def;
  if (t != LUA_TNIL) {
    if (t != LUA_TBOOLEAN) opt_type_error(L, fn, key, "a boolean");
    v = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* ====================================================================== */
/* Time and interruption                                                  */
/* ====================================================================== */

volatile sig_atomic_t capil_stop_signal = 0;

int capil_interrupted(void) { return capil_stop_signal != 0; }

double capil_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
