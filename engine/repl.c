/*
** repl.c — capil.core.repl: line input for `capil repl` through libedit
** (history, editing, Tab completion). The read-eval-print loop itself is Lua
** (lua/capil/repl.lua); this file only reads lines and keeps history.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>

#include "capil.h"
#include "host.h"

/* The state and registry ref of the Lua completion function: libedit's
** completion callback has no user-data pointer. One REPL per process. */
static lua_State *complete_L = NULL;
static int complete_ref = LUA_NOREF;

/* ====================================================================== */
/* Completion                                                             */
/* ====================================================================== */

/* Protected part of the completion: calls fn(word, line) -> {candidates},
** {[candidate] = true} (the candidates that take no space after them: a
** table's name goes on with "." or ":"); keeps both in the registry. */
static int complete_call(lua_State *L) {
  const char *word = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, complete_ref);
  lua_pushstring(L, word);
  lua_pushstring(L, rl_line_buffer ? rl_line_buffer : "");
  lua_call(L, 2, 2);
  if (!lua_istable(L, -1)) { lua_pop(L, 1); lua_pushnil(L); }
  lua_setfield(L, LUA_REGISTRYINDEX, "capil.repl.nospace");
  if (!lua_istable(L, -1)) { lua_pop(L, 1); lua_pushnil(L); }
  lua_setfield(L, LUA_REGISTRYINDEX, "capil.repl.candidates");
  return 0;
}

/* libedit generator: state 0 asks Lua for the candidates, then hands them
** out one by one (malloc'd, as readline wants). Lua errors are swallowed:
** a broken completer must not kill the prompt (and never longjmps here). */
static char *generator(const char *text, int state) {
  static int idx;
  lua_State *L = complete_L;
  if (!L || complete_ref == LUA_NOREF) return NULL;
  if (state == 0) {
    idx = 1;
    lua_pushcfunction(L, complete_call);
    lua_pushlightuserdata(L, (void *)text);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      lua_pop(L, 1);
      lua_pushnil(L);
      lua_setfield(L, LUA_REGISTRYINDEX, "capil.repl.candidates");
      lua_pushnil(L);
      lua_setfield(L, LUA_REGISTRYINDEX, "capil.repl.nospace");
    }
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "capil.repl.candidates");
  if (!lua_istable(L, -1)) { lua_pop(L, 1); return NULL; }
  lua_rawgeti(L, -1, idx++);
  const char *c = lua_tostring(L, -1);
  char *out = c ? strdup(c) : NULL;
  lua_pop(L, 2);
  return out;
}

/* Whether the one match `m` takes no space after it (the Lua completer
** said so: the name of a table, continued with "." or ":"). */
static int no_space_after(const char *m) {
  lua_State *L = complete_L;
  lua_getfield(L, LUA_REGISTRYINDEX, "capil.repl.nospace");
  int yes = 0;
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, m);
    yes = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return yes;
}

static char **attempted_completion(const char *text, int start, int end) {
  (void)start; (void)end;
  rl_attempted_completion_over = 1; /* no filename completion fallback */
  char **matches = rl_completion_matches(text, generator);
  /* One match: libedit appends rl_completion_append_character after it.
  ** Its list is {common prefix, the match, NULL} (readline's {match, NULL}). */
  const char *one = NULL;
  if (matches && matches[0]) one = !matches[1] ? matches[0] : !matches[2] ? matches[1] : NULL;
  rl_completion_append_character = one && no_space_after(one) ? '\0' : ' ';
  return matches;
}

/* ====================================================================== */
/* Functions                                                              */
/* ====================================================================== */

/*
** repl.readline(prompt) -> line | false (Ctrl-C: the line was dropped)
**                       | nil (end of input)
** On a terminal libedit edits the line; otherwise plain stdin lines are read
** (so a script can be piped into `capil repl`).
*/
static int l_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "> ");
  capil_host_clear_interrupt(L);
  if (!isatty(0)) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int c, any = 0;
    while ((c = getchar()) != EOF && c != '\n') { luaL_addchar(&b, (char)c); any = 1; }
    if (c == EOF && !any) { lua_pushnil(L); return 1; }
    luaL_pushresult(&b);
    return 1;
  }
  char *line = readline(prompt);
  if (capil_interrupted()) {
    capil_host_clear_interrupt(L);
    free(line);
    fputc('\n', stdout);
    lua_pushboolean(L, 0);
    return 1;
  }
  if (!line) { lua_pushnil(L); return 1; }
  lua_pushstring(L, line);
  free(line);
  return 1;
}

/* repl.add_history(line) */
static int l_add_history(lua_State *L) {
  add_history(luaL_checkstring(L, 1));
  return 0;
}

/* repl.load_history(path) -> true | nil, msg, code (absent file is fine) */
static int l_load_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (access(path, F_OK) != 0) { lua_pushboolean(L, 1); return 1; }
  if (read_history(path) != 0)
    return capil_fail_errno(L, errno ? errno : EIO, "repl.load_history: %s", path);
  lua_pushboolean(L, 1);
  return 1;
}

/* repl.save_history(path [, max]) -> true | nil, msg, code */
static int l_save_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int max = (int)luaL_optinteger(L, 2, 1000);
  stifle_history(max);
  if (write_history(path) != 0)
    return capil_fail_errno(L, errno ? errno : EIO, "repl.save_history: %s", path);
  lua_pushboolean(L, 1);
  return 1;
}

/* repl.set_completer(fn(word, line) -> {candidates}) */
static int l_set_completer(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (complete_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, complete_ref);
  lua_pushvalue(L, 1);
  complete_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  complete_L = L;
  rl_attempted_completion_function = attempted_completion;
  rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[]";
  return 0;
}

/* repl.interactive() -> is stdin a terminal */
static int l_interactive(lua_State *L) {
  lua_pushboolean(L, isatty(0));
  return 1;
}

/* repl.clear_interrupt() — the REPL survives Ctrl-C during an evaluation */
static int l_clear_interrupt(lua_State *L) {
  capil_host_clear_interrupt(L);
  return 0;
}

static const luaL_Reg funcs[] = {
  {"readline", l_readline},
  {"add_history", l_add_history},
  {"load_history", l_load_history},
  {"save_history", l_save_history},
  {"set_completer", l_set_completer},
  {"interactive", l_interactive},
  {"clear_interrupt", l_clear_interrupt},
  {NULL, NULL}
};

int luaopen_capil_core_repl(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
