/*
** json.c — capil.core.json: JSON text <-> Lua values on jansson.
**
** Decoded arrays and objects carry marker metatables (json.array_mt,
** json.object_mt) so that encode(decode(s)) keeps `[]` apart from `{}`; JSON
** null is the unique userdata json.null both ways. Integers inside int64 are
** exact Lua integers; integer literals beyond int64 (which jansson rejects)
** decode as strings of their digits. Floats encode with 17 significant digits
** (exact round trip).
**
** Every jansson tree and dump lives in a Box userdata while Lua code that can
** raise runs, so a memory error or a misuse error leaks nothing.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "capil.h"

#define NULL_MT "capil.sys.json.null"
#define BOX_MT "capil.sys.json.Box"

/* upvalues shared by decode and encode */
#define UV_NULL lua_upvalueindex(1)
#define UV_ARRAY_MT lua_upvalueindex(2)
#define UV_OBJECT_MT lua_upvalueindex(3)

/* the deepest nesting encode accepts: the same as jansson's parser limit, so
** whatever decodes also encodes */
#define MAX_DEPTH JSON_PARSER_MAX_DEPTH

typedef struct {
  json_t *root;
  char *text;
} Box;

/* ====================================================================== */
/* Box: owner of C memory during a call                                   */
/* ====================================================================== */

static int box_gc(lua_State *L) {
  Box *b = luaL_checkudata(L, 1, BOX_MT);
  if (b->root) { json_decref(b->root); b->root = NULL; }
  free(b->text);
  b->text = NULL;
  return 0;
}

static Box *new_box(lua_State *L) {
  Box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->root = NULL;
  b->text = NULL;
  luaL_setmetatable(L, BOX_MT);
  return b;
}

/* ====================================================================== */
/* UTF-8                                                                  */
/* ====================================================================== */

/* Length of the valid UTF-8 prefix of s (== len when all of it is valid):
** no overlong forms, no surrogates, nothing above U+10FFFF (jansson's rules). */
static size_t utf8_prefix(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    if (c < 0x80) { i++; continue; }
    size_t n;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) { n = 1; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
    else return i;
    if (i + n >= len) return i; /* truncated sequence */
    for (size_t k = 1; k <= n; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += n + 1;
  }
  return len;
}

/* ====================================================================== */
/* Integers beyond int64                                                  */
/* ====================================================================== */

/* Calls fn for each integer literal (outside strings) whose value does not
** fit int64, with its byte range [start, end). Returns how many there are. */
typedef void (*bigint_fn)(void *ud, size_t start, size_t end);

static size_t scan_bigints(const char *s, size_t n, bigint_fn fn, void *ud) {
  size_t count = 0;
  int in_string = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (in_string) {
      if (c == '\\') i++;
      else if (c == '"') in_string = 0;
      continue;
    }
    if (c == '"') { in_string = 1; continue; }
    if (c != '-' && (c < '0' || c > '9')) continue;
    size_t start = i, digits;
    int neg = c == '-';
    if (neg) i++;
    digits = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    size_t ndig = i - digits;
    int integer = i >= n || (s[i] != '.' && s[i] != 'e' && s[i] != 'E');
    while (i < n && s[i] != '\0' && strchr("0123456789.eE+-", s[i])) i++;
    int big = integer && (ndig > 19 ||
                          (ndig == 19 && memcmp(s + digits, neg ? "9223372036854775808"
                                                                : "9223372036854775807", 19) > 0));
    if (big) {
      count++;
      if (fn) fn(ud, start, i);
    }
    i--; /* the loop's i++ */
  }
  return count;
}

typedef struct {
  luaL_Buffer b;
  const char *s;
  size_t done;  /* bytes of s already copied */
} Requote;

static void requote_one(void *ud, size_t start, size_t end) {
  Requote *r = ud;
  luaL_addlstring(&r->b, r->s + r->done, start - r->done);
  luaL_addchar(&r->b, '"');
  luaL_addlstring(&r->b, r->s + start, end - start);
  luaL_addchar(&r->b, '"');
  r->done = end;
}

/* Pushes s with every integer literal beyond int64 turned into a string. */
static void push_requoted(lua_State *L, const char *s, size_t n) {
  Requote r;
  r.s = s;
  r.done = 0;
  luaL_buffinit(L, &r.b);
  scan_bigints(s, n, requote_one, &r);
  luaL_addlstring(&r.b, s + r.done, n - r.done);
  luaL_pushresult(&r.b);
}

typedef struct {
  size_t pos;    /* an error position in the requoted text */
  size_t shift;  /* quotes inserted before it */
} Unquote;

static void unquote_one(void *ud, size_t start, size_t end) {
  Unquote *u = ud;
  (void)end;
  if (start + u->shift < u->pos) u->shift += 2;
}

/* Line and column (jansson's way: characters, 1-based) of byte pos in s. */
static void line_column(const char *s, size_t pos, int *line, int *column) {
  *line = 1;
  *column = 0;
  for (size_t i = 0; i < pos; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\n') { (*line)++; *column = 0; }
    else if ((c & 0xC0) != 0x80) (*column)++;
  }
}

/* ====================================================================== */
/* decode                                                                 */
/* ====================================================================== */

/* Pushes the Lua value for v; containers get their marker metatable. */
static void push_value(lua_State *L, json_t *v) {
  luaL_checkstack(L, 4, "json.decode: nesting too deep");
  switch (json_typeof(v)) {
    case JSON_OBJECT: {
      lua_createtable(L, 0, (int)json_object_size(v));
      for (void *it = json_object_iter(v); it; it = json_object_iter_next(v, it)) {
        lua_pushlstring(L, json_object_iter_key(it), json_object_iter_key_len(it));
        push_value(L, json_object_iter_value(it));
        lua_rawset(L, -3);
      }
      lua_pushvalue(L, UV_OBJECT_MT);
      lua_setmetatable(L, -2);
      break;
    }
    case JSON_ARRAY: {
      size_t n = json_array_size(v);
      lua_createtable(L, (int)n, 0);
      for (size_t i = 0; i < n; i++) {
        push_value(L, json_array_get(v, i));
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      lua_pushvalue(L, UV_ARRAY_MT);
      lua_setmetatable(L, -2);
      break;
    }
    case JSON_STRING:
      lua_pushlstring(L, json_string_value(v), json_string_length(v));
      break;
    case JSON_INTEGER:
      lua_pushinteger(L, (lua_Integer)json_integer_value(v));
      break;
    case JSON_REAL:
      lua_pushnumber(L, (lua_Number)json_real_value(v));
      break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    case JSON_NULL: lua_pushvalue(L, UV_NULL); break;
  }
}

/*
** json.decode(s) -> value | nil, "json.decode: line L, column C: reason", "JSON_PARSE"
** Any JSON value is accepted at the top (a bare "null" gives json.null).
*/
static int l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_settop(L, 1);
  Box *box = new_box(L); /* index 2 */
  const size_t flags = JSON_DECODE_ANY | JSON_ALLOW_NUL;
  json_error_t err;
  box->root = json_loadb(s, n, flags, &err);
  if (!box->root && json_error_code(&err) == json_error_numeric_overflow &&
      strstr(err.text, "integer") && scan_bigints(s, n, NULL, NULL) > 0) {
    /* jansson refuses integers beyond int64: parse again with those quoted */
    push_requoted(L, s, n); /* index 3 */
    size_t qn;
    const char *q = lua_tolstring(L, 3, &qn);
    box->root = json_loadb(q, qn, flags, &err);
    if (!box->root) {
      Unquote u = {(size_t)err.position, 0};
      scan_bigints(s, n, unquote_one, &u);
      size_t pos = u.pos >= u.shift ? u.pos - u.shift : 0;
      line_column(s, pos > n ? n : pos, &err.line, &err.column);
    }
  }
  if (!box->root)
    return capil_fail(L, "JSON_PARSE", "json.decode: line %d, column %d: %s",
                      err.line, err.column, err.text);
  push_value(L, box->root);
  json_decref(box->root);
  box->root = NULL;
  return 1;
}

/* ====================================================================== */
/* encode                                                                 */
/* ====================================================================== */

/* One step of the path to the value being encoded, for error messages. */
typedef struct {
  const char *key;      /* object key (anchored on the Lua stack), or NULL */
  size_t keylen;
  lua_Integer index;    /* array index (1-based, as in the Lua table) */
} Step;

typedef struct {
  lua_State *L;
  Box *box;
  int visiting;         /* stack index of the set of tables being encoded */
  Step path[MAX_DEPTH + 2];
} Encoder;

/* Adds a path step; keys show at most 60 bytes, odd bytes as '?'. */
static void add_step(lua_State *L, luaL_Buffer *b, const Step *st) {
  if (!st->key) {
    lua_pushfstring(L, "[%I]", st->index);
    luaL_addvalue(b);
    return;
  }
  int plain = utf8_prefix(st->key, st->keylen) == st->keylen;
  luaL_addchar(b, '.');
  for (size_t i = 0; i < st->keylen && i < 60; i++) {
    unsigned char c = (unsigned char)st->key[i];
    luaL_addchar(b, c < 0x20 || c == 0x7F || (c >= 0x80 && !plain) ? '?' : (char)c);
  }
  if (st->keylen > 60) luaL_addstring(b, "...");
}

/* Raises "json.encode: <problem> at $.a[2].b" (long paths elided). */
static int encode_error(Encoder *e, int depth, const char *problem) {
  lua_State *L = e->L;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "json.encode: ");
  luaL_addstring(&b, problem);
  luaL_addstring(&b, " at $");
  for (int d = 1; d <= depth; d++) {
    if (depth > 20 && d == 9) {
      lua_pushfstring(L, "...(%d levels)...", depth - 16);
      luaL_addvalue(&b);
      d = depth - 7;
    }
    add_step(L, &b, &e->path[d]);
  }
  luaL_pushresult(&b);
  return lua_error(L);
}

/* Hangs v under parent (or makes it the root): the tree then owns it. */
static void attach(Encoder *e, json_t *parent, int depth, json_t *v) {
  int bad = v == NULL;
  if (bad) {
    /* nothing to attach */
  } else if (!parent) {
    e->box->root = v;
  } else if (json_is_array(parent)) {
    bad = json_array_append_new(parent, v) != 0;
  } else {
    Step *st = &e->path[depth];
    bad = json_object_setn_new_nocheck(parent, st->key, st->keylen, v) != 0;
  }
  if (bad) encode_error(e, depth, "out of memory");
}

/* Classifies the table at idx: 1 array (with *len elements), 0 object. */
static int table_kind(Encoder *e, int idx, int depth, size_t *len) {
  lua_State *L = e->L;
  int marked = 0; /* 1 array_mt, 2 object_mt */
  if (lua_getmetatable(L, idx)) {
    if (lua_rawequal(L, -1, UV_ARRAY_MT)) marked = 1;
    else if (lua_rawequal(L, -1, UV_OBJECT_MT)) marked = 2;
    lua_pop(L, 1);
  }
  size_t count = 0, strings = 0;
  lua_Integer max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
    if (lua_type(L, -1) == LUA_TSTRING) { strings++; continue; }
    int isint = 0;
    lua_Integer k = lua_tointegerx(L, -1, &isint);
    if (lua_type(L, -1) == LUA_TNUMBER && isint && k >= 1) {
      if (k > max) max = k;
      continue;
    }
    lua_pop(L, 1);
    return encode_error(e, depth, "table key that is neither a string nor a positive integer");
  }
  if (marked == 2 || (marked == 0 && strings == count)) {
    if (strings != count)
      return encode_error(e, depth, "object (json.object_mt) with a non-string key");
    return 0;
  }
  if (strings > 0)
    return encode_error(e, depth, marked ? "array (json.array_mt) with a string key"
                                         : "table mixing string and integer keys");
  if (marked == 0 && (size_t)max != count)
    return encode_error(e, depth, "table with holes (use json.array{...} for nulls)");
  if ((size_t)max > 2 * count + 64)
    return encode_error(e, depth, "array too sparse");
  *len = (size_t)max;
  return 1;
}

static void encode_value(Encoder *e, int idx, json_t *parent, int depth);

/* Encodes the table at idx (not yet seen on this path) under parent. */
static void encode_table(Encoder *e, int idx, json_t *parent, int depth) {
  lua_State *L = e->L;
  if (depth > MAX_DEPTH) encode_error(e, depth, "nesting deeper than 2048 levels");
  luaL_checkstack(L, 6, "json.encode: nesting too deep");
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->visiting) != LUA_TNIL) encode_error(e, depth, "cycle (table contains itself)");
  lua_pop(L, 1);
  size_t len = 0;
  int array = table_kind(e, idx, depth, &len);
  json_t *v = array ? json_array() : json_object();
  attach(e, parent, depth, v);
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, e->visiting);
  Step *st = &e->path[depth + 1];
  if (array) {
    for (size_t i = 1; i <= len; i++) {
      st->key = NULL;
      st->index = (lua_Integer)i;
      lua_rawgeti(L, idx, (lua_Integer)i);
      encode_value(e, lua_gettop(L), v, depth + 1);
      lua_pop(L, 1);
    }
  } else {
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      st->key = lua_tolstring(L, -2, &st->keylen); /* a string: no conversion */
      if (utf8_prefix(st->key, st->keylen) != st->keylen)
        encode_error(e, depth + 1, "key that is not valid UTF-8");
      encode_value(e, lua_gettop(L), v, depth + 1);
      lua_pop(L, 1);
    }
  }
  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, e->visiting);
}

/* Encodes the Lua value at idx and attaches it under parent. */
static void encode_value(Encoder *e, int idx, json_t *parent, int depth) {
  lua_State *L = e->L;
  json_t *v = NULL;
  switch (lua_type(L, idx)) {
    case LUA_TTABLE:
      encode_table(e, idx, parent, depth);
      return;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (utf8_prefix(s, n) != n) encode_error(e, depth, "string that is not valid UTF-8");
      v = json_stringn_nocheck(s, n);
      break;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        v = json_integer((json_int_t)lua_tointeger(L, idx));
      } else {
        double d = (double)lua_tonumber(L, idx);
        if (isnan(d)) encode_error(e, depth, "NaN");
        if (isinf(d)) encode_error(e, depth, "infinite number");
        v = json_real(d);
      }
      break;
    case LUA_TBOOLEAN:
      v = lua_toboolean(L, idx) ? json_true() : json_false();
      break;
    case LUA_TNIL:
      if (depth == 0 || !parent || !json_is_array(parent))
        encode_error(e, depth, "nil (use json.null)");
      v = json_null();
      break;
    case LUA_TUSERDATA:
      if (lua_rawequal(L, idx, UV_NULL)) { v = json_null(); break; }
      /* fall through */
    default: {
      const char *what = lua_pushfstring(L, "value of type %s", luaL_typename(L, idx));
      encode_error(e, depth, what);
    }
  }
  attach(e, parent, depth, v);
}

/*
** json.encode(v [, {indent = n | true, sort_keys = bool}]) -> string
** Raises on what JSON cannot hold: functions, NaN/inf, cycles, keys that are
** not strings (arrays need 1..n), invalid UTF-8, nesting beyond 2048.
** An empty table without marker encodes as {}; json.array{} as [].
*/
static int l_encode(lua_State *L) {
  static const char *const opts[] = {"indent", "sort_keys", NULL};
  luaL_checkany(L, 1);
  size_t flags = JSON_ENCODE_ANY | JSON_REAL_PRECISION(17);
  if (!lua_isnoneornil(L, 2)) {
    capil_check_options(L, 2, "json.encode", opts);
    if (capil_opt_field(L, 2, "indent") == LUA_TBOOLEAN) {
      if (lua_toboolean(L, -1)) flags |= JSON_INDENT(2);
    } else {
      lua_Integer ind = capil_opt_integer(L, 2, "json.encode", "indent", 0);
      if (ind < 0 || ind > JSON_MAX_INDENT)
        return luaL_error(L, "json.encode: option 'indent' must be 0..%d", JSON_MAX_INDENT);
      flags |= JSON_INDENT(ind);
    }
    lua_pop(L, 1);
    if (capil_opt_boolean(L, 2, "json.encode", "sort_keys", 0)) flags |= JSON_SORT_KEYS;
  }
  if (!(flags & JSON_MAX_INDENT)) flags |= JSON_COMPACT;
  lua_settop(L, 1);
  Box *box = new_box(L);                          /* 2 */
  lua_newtable(L);                                /* 3: tables being encoded */
  Encoder *e = lua_newuserdatauv(L, sizeof *e, 0); /* 4 */
  e->L = L;
  e->box = box;
  e->visiting = 3;
  encode_value(e, 1, NULL, 0);
  box->text = json_dumps(box->root, flags);
  if (!box->text) return luaL_error(L, "json.encode: out of memory");
  lua_pushstring(L, box->text);
  json_decref(box->root);
  box->root = NULL;
  free(box->text);
  box->text = NULL;
  return 1;
}

/* ====================================================================== */
/* Markers                                                                */
/* ====================================================================== */

/* json.array([t]) -> t marked as an array (encodes as [...], [] when empty) */
static int l_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) { lua_settop(L, 0); lua_newtable(L); }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushvalue(L, UV_ARRAY_MT);
  lua_setmetatable(L, 1);
  return 1;
}

/* json.object([t]) -> t marked as an object (encodes as {...}) */
static int l_object(lua_State *L) {
  if (lua_isnoneornil(L, 1)) { lua_settop(L, 0); lua_newtable(L); }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushvalue(L, UV_OBJECT_MT);
  lua_setmetatable(L, 1);
  return 1;
}

static int null_tostring(lua_State *L) {
  lua_pushliteral(L, "json.null");
  return 1;
}

static const luaL_Reg funcs[] = {
  {"decode", l_decode},
  {"encode", l_encode},
  {"array", l_array},
  {"object", l_object},
  {NULL, NULL}
};

/* Creates the internal Box metatable and pushes null, array_mt, object_mt. */
static void create_meta(lua_State *L) {
  luaL_newmetatable(L, BOX_MT);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_newuserdatauv(L, 0, 0);
  luaL_newmetatable(L, NULL_MT);
  lua_pushcfunction(L, null_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "protected");
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_newtable(L);
  lua_pushliteral(L, "json.array");
  lua_setfield(L, -2, "__name");
  lua_newtable(L);
  lua_pushliteral(L, "json.object");
  lua_setfield(L, -2, "__name");
}

int luaopen_capil_core_json(lua_State *L) {
  luaL_newlibtable(L, funcs);    /* module */
  create_meta(L);                /* null, array_mt, object_mt */
  lua_pushvalue(L, -3);
  lua_setfield(L, -5, "null");
  lua_pushvalue(L, -2);
  lua_setfield(L, -5, "array_mt");
  lua_pushvalue(L, -1);
  lua_setfield(L, -5, "object_mt");
  luaL_setfuncs(L, funcs, 3);
  return 1;
}
