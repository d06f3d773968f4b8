/*
** xml.c — capil.core.xml: an expat parser that builds a Lua tree, and the
** escaping the writer (lua/capil/sys/xml.lua) relies on.
**
** Tree: an element is a table {name =, ns =, prefix =, attrs =, nsmap =,
** [1..n] = children}, children being strings (text) or elements. With
** namespaces (the default) `name` is the local name, `ns` the namespace URI
** (nil for none), attributes in a namespace are keyed "{uri}local" (Clark
** notation), and `nsmap` is the prefix -> URI map in scope at the element
** ("" for the default namespace), shared between elements that declare
** nothing, so QName-valued attributes (xsi:type="vim25:VirtualMachine") can
** be resolved.
**
** No longjmp crosses expat: every callback does its Lua work through
** lua_pcall of a small builder, the element stack being this function's own
** Lua stack. A failed builder (a memory error) is parked in a reserved stack
** slot, the parser stopped, and the error raised again once XML_Parse has
** returned. Text is gathered in a C buffer owned by the Parser userdata.
**
** Security: documents that declare entities are refused (billion laughs),
** references to undeclared entities too, no external entity or DTD is ever
** read, nesting is limited (max_depth, default 1000) and so is the size.
*/
#include <stdlib.h>
#include <string.h>

#include <expat.h>

#include "capil.h"

#define PARSER_MT "capil.sys.xml.Parser"

/* separates URI, local name and prefix in expat's names: 0x01 cannot occur
** in an XML 1.0 document, not even as a character reference */
#define NS_SEP '\x01'
#define XML_NS_URI "http://www.w3.org/XML/1998/namespace"
#define CHUNK (1 << 20)

typedef struct {
  XML_Parser xp;
  lua_State *L;
  int namespaces, keep_whitespace;
  int depth, max_depth;
  int stopped;          /* stopped by us: msg (or a parked Lua error) says why */
  int pending;          /* namespace declarations wait for their element */
  char msg[200];
  unsigned long line, column;
  char *text;           /* character data not yet added to the tree */
  size_t tlen, tcap;
  /* arguments for the builders, set just before they run */
  const XML_Char *name, **atts, *prefix, *uri;
} Parser;

/* Stack slots of l_parse, fixed while expat runs. */
enum { S_INPUT = 1, S_OPTS, S_PARSER, S_ERROR, S_PENDING, S_DOC, S_TOP };

/* ====================================================================== */
/* Parser handle                                                          */
/* ====================================================================== */

static int parser_gc(lua_State *L) {
  Parser *p = luaL_checkudata(L, 1, PARSER_MT);
  if (p->xp) { XML_ParserFree(p->xp); p->xp = NULL; }
  free(p->text);
  p->text = NULL;
  return 0;
}

/* Stops expat with our own reason, remembering where it happened. */
static void stop(Parser *p, const char *why) {
  if (p->stopped) return;
  p->stopped = 1;
  if (why) snprintf(p->msg, sizeof p->msg, "%s", why);
  p->line = XML_GetCurrentLineNumber(p->xp);
  p->column = XML_GetCurrentColumnNumber(p->xp) + 1;
  XML_StopParser(p->xp, XML_FALSE);
}

/* Runs builder f on the nargs values on top of the stack (nres results)
** under lua_pcall; on error parks it in S_ERROR and stops the parser. The
** caller has made room on the stack, so nothing here can raise. */
static int protect(Parser *p, lua_CFunction f, int nargs, int nres) {
  lua_State *L = p->L;
  lua_pushcfunction(L, f);
  lua_insert(L, -(nargs + 1));
  if (lua_pcall(L, nargs, nres, 0) != LUA_OK) {
    lua_replace(L, S_ERROR);
    stop(p, NULL);
    return 0;
  }
  return 1;
}

/* ====================================================================== */
/* Builders (run under lua_pcall, may raise)                              */
/* ====================================================================== */

/* Appends the value on top to the table at idx, as its next child. */
static void append(lua_State *L, int idx) {
  lua_rawseti(L, idx, (lua_Integer)lua_rawlen(L, idx) + 1);
}

/* b_text(parser, element): appends the gathered text. */
static int b_text(lua_State *L) {
  Parser *p = lua_touserdata(L, 1);
  lua_pushlstring(L, p->text, p->tlen);
  append(L, 2);
  return 0;
}

/* b_nsdecl(parser, pending): records xmlns[:prefix]="uri" for the next element. */
static int b_nsdecl(lua_State *L) {
  Parser *p = lua_touserdata(L, 1);
  lua_pushstring(L, p->prefix ? p->prefix : "");
  if (p->uri && *p->uri) lua_pushstring(L, p->uri);
  else lua_pushboolean(L, 0); /* xmlns="" undeclares the default namespace */
  lua_rawset(L, 2);
  return 0;
}

/* Pushes the parts of an expat name "uri SEP local [SEP prefix]"; returns
** how many (1 when the name is in no namespace). */
static int push_name_parts(lua_State *L, const char *name) {
  const char *a = strchr(name, NS_SEP);
  if (!a) { lua_pushstring(L, name); return 1; }
  lua_pushlstring(L, name, (size_t)(a - name));   /* uri */
  const char *b = strchr(a + 1, NS_SEP);
  if (!b) { lua_pushstring(L, a + 1); return 2; }
  lua_pushlstring(L, a + 1, (size_t)(b - a - 1));  /* local */
  lua_pushstring(L, b + 1);                        /* prefix */
  return 3;
}

/* Sets el.nsmap: the parent's map, or a copy with the pending declarations. */
static void set_nsmap(lua_State *L, Parser *p, int el, int parent, int pending) {
  lua_getfield(L, parent, "nsmap");
  if (p->pending) {
    lua_newtable(L);
    int map = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, map - 1)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, map);
    }
    lua_pushnil(L);
    while (lua_next(L, pending)) {
      lua_pushvalue(L, -2);
      if (lua_toboolean(L, -2)) lua_pushvalue(L, -2);
      else lua_pushnil(L);
      lua_rawset(L, map);
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, pending); /* clearing fields while traversing is allowed */
    }
    p->pending = 0;
  }
  lua_setfield(L, el, "nsmap");
  lua_settop(L, el);
}

/* b_start(parser, parent, pending) -> element, appended to parent. */
static int b_start(lua_State *L) {
  Parser *p = lua_touserdata(L, 1);
  lua_createtable(L, 0, 5);
  int el = lua_gettop(L);
  if (!p->namespaces) {
    lua_pushstring(L, p->name);
    lua_setfield(L, el, "name");
  } else {
    int n = push_name_parts(L, p->name);
    if (n == 3) lua_setfield(L, el, "prefix");
    lua_setfield(L, el, "name");
    if (n >= 2) lua_setfield(L, el, "ns");
  }
  lua_newtable(L);
  for (const XML_Char **a = p->atts; a[0]; a += 2) {
    if (p->namespaces && strchr(a[0], NS_SEP)) {
      int n = push_name_parts(L, a[0]);
      lua_pop(L, n - 2); /* the prefix does not matter */
      lua_pushfstring(L, "{%s}%s", lua_tostring(L, -2), lua_tostring(L, -1));
      lua_replace(L, -3);
      lua_pop(L, 1);
    } else {
      lua_pushstring(L, a[0]);
    }
    lua_pushstring(L, a[1]);
    lua_rawset(L, -3);
  }
  lua_setfield(L, el, "attrs");
  if (p->namespaces) set_nsmap(L, p, el, 2, 3);
  lua_pushvalue(L, el);
  append(L, 2);
  return 1;
}

/* ====================================================================== */
/* expat callbacks (never raise)                                          */
/* ====================================================================== */

static int only_whitespace(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') return 0;
  return 1;
}

/* Adds the gathered text to the element on top of the stack. */
static void flush_text(Parser *p) {
  if (p->tlen == 0 || p->stopped) return;
  if (p->keep_whitespace || !only_whitespace(p->text, p->tlen)) {
    lua_pushvalue(p->L, S_PARSER);
    lua_pushvalue(p->L, -2);
    protect(p, b_text, 2, 0);
  }
  p->tlen = 0;
}

static void XMLCALL on_start(void *ud, const XML_Char *name, const XML_Char **atts) {
  Parser *p = ud;
  lua_State *L = p->L;
  if (p->stopped) return;
  if (p->depth >= p->max_depth) {
    char why[80];
    snprintf(why, sizeof why, "nesting deeper than %d levels", p->max_depth);
    stop(p, why);
    return;
  }
  if (!lua_checkstack(L, 12)) { stop(p, "out of memory"); return; }
  flush_text(p);
  if (p->stopped) return;
  p->name = name;
  p->atts = atts;
  lua_pushvalue(L, S_PARSER);
  lua_pushvalue(L, -2); /* the parent */
  lua_pushvalue(L, S_PENDING);
  if (protect(p, b_start, 3, 1)) p->depth++; /* the element stays on the stack */
}

static void XMLCALL on_end(void *ud, const XML_Char *name) {
  Parser *p = ud;
  (void)name;
  if (p->stopped) return;
  if (!lua_checkstack(p->L, 6)) { stop(p, "out of memory"); return; }
  flush_text(p);
  lua_pop(p->L, 1);
  p->depth--;
}

static void XMLCALL on_text(void *ud, const XML_Char *s, int len) {
  Parser *p = ud;
  if (p->stopped || p->depth == 0 || len <= 0) return;
  if (p->tlen + (size_t)len > p->tcap) {
    size_t cap = p->tcap ? p->tcap : 256;
    while (cap < p->tlen + (size_t)len) cap *= 2;
    char *t = realloc(p->text, cap);
    if (!t) { stop(p, "out of memory"); return; }
    p->text = t;
    p->tcap = cap;
  }
  memcpy(p->text + p->tlen, s, (size_t)len);
  p->tlen += (size_t)len;
}

static void XMLCALL on_nsdecl(void *ud, const XML_Char *prefix, const XML_Char *uri) {
  Parser *p = ud;
  if (p->stopped) return;
  if (!lua_checkstack(p->L, 6)) { stop(p, "out of memory"); return; }
  p->prefix = prefix;
  p->uri = uri;
  lua_pushvalue(p->L, S_PARSER);
  lua_pushvalue(p->L, S_PENDING);
  if (protect(p, b_nsdecl, 2, 0)) p->pending = 1;
}

static void XMLCALL on_entity_decl(void *ud, const XML_Char *name, int is_param,
                                   const XML_Char *value, int value_length,
                                   const XML_Char *base, const XML_Char *system_id,
                                   const XML_Char *public_id, const XML_Char *notation) {
  Parser *p = ud;
  char why[160];
  snprintf(why, sizeof why, "entity declarations are not allowed (<!ENTITY %s%.60s>)",
           is_param ? "% " : "", name);
  stop(p, why);
}

static void XMLCALL on_skipped_entity(void *ud, const XML_Char *name, int is_param) {
  Parser *p = ud;
  char why[120];
  snprintf(why, sizeof why, "reference to undeclared entity %s%.60s;", is_param ? "%" : "&", name);
  stop(p, why);
}

/* ====================================================================== */
/* parse                                                                  */
/* ====================================================================== */

/*
** xml.parse(s [, {namespaces = true, keep_whitespace = false,
**                 max_depth = 1000, max_size = 256 MiB}])
**   -> root element | nil, "xml.parse: line L, column C: reason", "XML_PARSE"
** Text nodes made only of whitespace are dropped unless keep_whitespace.
*/
static int l_parse(lua_State *L) {
  static const char *const opts[] = {"namespaces", "keep_whitespace", "max_depth",
                                     "max_size", NULL};
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "xml.parse", opts);
  int namespaces = capil_opt_boolean(L, 2, "xml.parse", "namespaces", 1);
  int keep_ws = capil_opt_boolean(L, 2, "xml.parse", "keep_whitespace", 0);
  lua_Integer max_depth = capil_opt_integer(L, 2, "xml.parse", "max_depth", 1000);
  lua_Integer max_size = capil_opt_integer(L, 2, "xml.parse", "max_size", 256 << 20);
  if (max_depth < 1 || max_depth > 100000)
    return luaL_error(L, "xml.parse: option 'max_depth' must be 1..100000");
  if ((lua_Integer)len > max_size)
    return capil_fail(L, "XML_PARSE", "xml.parse: document of %zu bytes exceeds max_size (%lld)",
                      len, (long long)max_size);
  lua_settop(L, S_OPTS);
  Parser *p = lua_newuserdatauv(L, sizeof *p, 0); /* S_PARSER */
  memset(p, 0, sizeof *p);
  luaL_setmetatable(L, PARSER_MT);
  lua_pushnil(L);                                  /* S_ERROR */
  lua_newtable(L);                                 /* S_PENDING */
  lua_createtable(L, 1, 1);                        /* S_DOC: the root's parent */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, XML_NS_URI);
  lua_setfield(L, -2, "xml");
  lua_setfield(L, -2, "nsmap");
  luaL_checkstack(L, 16, "xml.parse");

  p->L = L;
  p->namespaces = namespaces;
  p->keep_whitespace = keep_ws;
  p->max_depth = (int)max_depth;
  p->xp = namespaces ? XML_ParserCreateNS(NULL, NS_SEP) : XML_ParserCreate(NULL);
  if (!p->xp) return luaL_error(L, "xml.parse: out of memory");
  XML_SetUserData(p->xp, p);
  if (namespaces) {
    XML_SetReturnNSTriplet(p->xp, 1);
    XML_SetStartNamespaceDeclHandler(p->xp, on_nsdecl);
  }
  XML_SetElementHandler(p->xp, on_start, on_end);
  XML_SetCharacterDataHandler(p->xp, on_text);
  XML_SetEntityDeclHandler(p->xp, on_entity_decl);
  XML_SetSkippedEntityHandler(p->xp, on_skipped_entity);
  XML_SetParamEntityParsing(p->xp, XML_PARAM_ENTITY_PARSING_NEVER);

  int ok = 1, interrupted = 0;
  size_t off = 0;
  do {
    size_t n = len - off < CHUNK ? len - off : CHUNK;
    int final = off + n == len;
    ok = XML_Parse(p->xp, s + off, (int)n, final) == XML_STATUS_OK;
    off += n;
    if (ok && !final && capil_interrupted()) { interrupted = 1; break; }
  } while (ok && off < len);

  unsigned long line = p->line, column = p->column;
  const char *why = p->msg;
  if (!ok && !p->stopped) {
    line = (unsigned long)XML_GetCurrentLineNumber(p->xp);
    column = (unsigned long)XML_GetCurrentColumnNumber(p->xp) + 1;
    why = XML_ErrorString(XML_GetErrorCode(p->xp)); /* a static string */
  }
  XML_ParserFree(p->xp);
  p->xp = NULL;
  if (!lua_isnil(L, S_ERROR)) { /* a builder raised (out of memory) */
    lua_pushvalue(L, S_ERROR);
    return lua_error(L);
  }
  if (interrupted) return capil_fail(L, "EINTR", "xml.parse: interrupted");
  if (!ok) return capil_fail(L, "XML_PARSE", "xml.parse: line %lu, column %lu: %s",
                             line, column, why);
  lua_rawgeti(L, S_DOC, 1);
  return 1;
}

/* ====================================================================== */
/* Escaping                                                               */
/* ====================================================================== */

/* Decodes one UTF-8 character at s[i] (n bytes left): its code point, or -1
** when invalid (overlong, surrogate, beyond U+10FFFF, truncated). */
static long utf8_char(const unsigned char *s, size_t n, size_t *size) {
  unsigned c = s[0];
  size_t k;
  long cp;
  if (c < 0x80) { *size = 1; return c; }
  if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; }
  else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; }
  else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; }
  else return -1;
  if (k >= n) return -1;
  for (size_t j = 1; j <= k; j++) {
    if ((s[j] & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (s[j] & 0x3F);
  }
  if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return -1;
  *size = k + 1;
  return cp;
}

/* Pushes s escaped for text (attr = 0) or an attribute value (attr = 1);
** raises when s holds what XML 1.0 cannot carry. */
static int escape(lua_State *L, const char *fn, int attr) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t i = 0;
  while (i < n) {
    size_t size;
    long cp = utf8_char(s + i, n - i, &size);
    if (cp < 0)
      return luaL_error(L, "%s: invalid UTF-8 at byte %d", fn, (int)i + 1);
    if ((cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r') || cp == 0xFFFE || cp == 0xFFFF) {
      char u[16];
      snprintf(u, sizeof u, "U+%04lX", (unsigned long)cp);
      return luaL_error(L, "%s: character %s at byte %d is not allowed in XML 1.0", fn, u,
                        (int)i + 1);
    }
    switch (cp) {
      case '&': luaL_addstring(&b, "&amp;"); break;
      case '<': luaL_addstring(&b, "&lt;"); break;
      case '>': luaL_addstring(&b, "&gt;"); break;
      case '"': luaL_addstring(&b, "&quot;"); break;
      case '\'': luaL_addstring(&b, "&apos;"); break;
      case '\r': luaL_addstring(&b, "&#13;"); break;
      case '\n': if (attr) luaL_addstring(&b, "&#10;"); else luaL_addchar(&b, '\n'); break;
      case '\t': if (attr) luaL_addstring(&b, "&#9;"); else luaL_addchar(&b, '\t'); break;
      default: luaL_addlstring(&b, (const char *)s + i, size);
    }
    i += size;
  }
  luaL_pushresult(&b);
  return 1;
}

/* xml.escape(s) -> s with & < > " ' escaped (and CR as &#13;, kept by parsers) */
static int l_escape(lua_State *L) { return escape(L, "xml.escape", 0); }

/* xml.escape_attr(s) -> as escape, plus TAB and LF as references, which
** attribute-value normalisation would otherwise turn into spaces */
static int l_escape_attr(lua_State *L) { return escape(L, "xml.escape_attr", 1); }

static const luaL_Reg funcs[] = {
  {"parse", l_parse},
  {"escape", l_escape},
  {"escape_attr", l_escape_attr},
  {NULL, NULL}
};

static void create_meta(lua_State *L) {
  luaL_newmetatable(L, PARSER_MT);
  lua_pushcfunction(L, parser_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

int luaopen_capil_core_xml(lua_State *L) {
  create_meta(L);
  luaL_newlib(L, funcs);
  lua_pushliteral(L, XML_NS_URI);
  lua_setfield(L, -2, "XML_NS");
  return 1;
}
