/*
** main.c — the capil command. `capil FILE.lua [args]`, `capil -e CODE` and
** `capil -` behave like the lua interpreter (so busted can run the specs
** inside capil); anything else is a subcommand handled by lua/capil/cli.lua.
*/
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "capil.h"
#include "host.h"

/* Message handler: adds a traceback, unless capil was interrupted (then the
** message is just "interrupted"). */
static int msghandler(lua_State *L) {
  /* errors raised by capil.cli for the user ({message=, exit=}) carry no
  ** traceback: they pass through as they are */
  if (lua_istable(L, 1)) {
    lua_getfield(L, 1, "message");
    int user = lua_isstring(L, -1);
    lua_pop(L, 1);
    if (user) { lua_settop(L, 1); return 1; }
  }
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  if (capil_interrupted()) {
    lua_pushstring(L, "interrupted");
    return 1;
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Error objects that capil.cli raises for the user: {message=..., exit=N}. */
static int user_error_exit(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return -1;
  lua_getfield(L, idx, "exit");
  int code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 1;
  lua_pop(L, 1);
  lua_getfield(L, idx, "message");
  capil_log_final_error(L, lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
  lua_pop(L, 1);
  return code;
}

/* Calls the function below its nargs arguments; returns the exit status. */
static int docall(lua_State *L, int nargs, int want_status) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int st = lua_pcall(L, nargs, want_status ? 1 : 0, base);
  lua_remove(L, base);
  int code = 0;
  if (st != LUA_OK) {
    int uexit = user_error_exit(L, -1);
    if (uexit >= 0) {
      code = uexit;
    } else {
      const char *m = lua_tostring(L, -1);
      capil_log_final_error(L, m ? m : "error");
      code = 1;
    }
    lua_pop(L, 1);
  } else if (want_status) {
    if (lua_isinteger(L, -1)) code = (int)lua_tointeger(L, -1);
    else if (lua_isboolean(L, -1)) code = lua_toboolean(L, -1) ? 0 : 1;
    lua_pop(L, 1);
  }
  capil_host_cleanup(L, st == LUA_OK ? "exit" : (capil_interrupted() ? "interrupted" : "error"));
  if (capil_interrupted()) code = 128 + capil_stop_signal;
  return code;
}

/* The `arg` table as lua.c builds it: script at 0, interpreter at -1. */
static void create_arg(lua_State *L, char **argv, int argc, int script) {
  lua_createtable(L, argc - script - 1, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int push_args(lua_State *L, char **argv, int argc, int first) {
  luaL_checkstack(L, argc - first + 3, "too many arguments to script");
  for (int i = first; i < argc; i++) lua_pushstring(L, argv[i]);
  return argc - first;
}

static int is_script(const char *a) {
  size_t n = strlen(a);
  return strcmp(a, "-") == 0 || strchr(a, '/') != NULL ||
         (n > 4 && strcmp(a + n - 4, ".lua") == 0);
}

int main(int argc, char **argv) {
  lua_State *L = capil_host_new();
  if (!L) {
    fputs("capil: cannot create the Lua state: out of memory\n", stderr);
    return 1;
  }
  capil_host_signals(L);
  int code;
  if (argc >= 3 && strcmp(argv[1], "-e") == 0) {
    create_arg(L, argv, argc, 2); /* arg[0] is the chunk, arg[1..] the rest */
    if (luaL_loadbuffer(L, argv[2], strlen(argv[2]), "=(command line)") != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      capil_log_final_error(L, m ? m : "error");
      code = 1;
    } else {
      code = docall(L, push_args(L, argv, argc, 3), 0);
    }
  } else if (argc >= 2 && is_script(argv[1])) {
    create_arg(L, argv, argc, 1);
    const char *fname = strcmp(argv[1], "-") == 0 ? NULL : argv[1];
    if (luaL_loadfile(L, fname) != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      capil_log_final_error(L, m ? m : "error");
      code = 1;
    } else {
      code = docall(L, push_args(L, argv, argc, 2), 0);
    }
  } else {
    /* subcommand: require("capil.cli").main({argv...}) -> exit status */
    create_arg(L, argv, argc, 0);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "capil.cli");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      capil_log_final_error(L, m ? m : "error");
      code = 1;
    } else {
      lua_getfield(L, -1, "main");
      lua_remove(L, -2);
      lua_newtable(L);
      for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
      }
      code = docall(L, 1, 1);
    }
  }
  fflush(stdout);
  lua_close(L);
  return code;
}
