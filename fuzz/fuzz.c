/*
** fuzz.c — the libFuzzer driver shared by every harness. Built once per
** target with -DCAPIL_FUZZ_TARGET="json" (see fuzz/CMakeLists.txt): one Lua
** state per process made by capil_host_new with the embedded library, and
** fuzz/targets.lua's function of that name called on each input.
**
** A Lua error is the normal "rejected" outcome. A finding (abort, so
** libFuzzer saves the input) is an error that looks internal: a non-string
** error value, or a message with "attempt to", "stack traceback",
** "lua/capil/" (an unhandled error that would print a traceback to a user)
** or "fuzz invariant" (a property targets.lua checks). C crashes, ASan and
** UBSan reports and timeouts are libFuzzer's own findings.
**
** The Lua VM (the system liblua) is not instrumented, so a line hook feeds
** libFuzzer coverage of the library's Lua code: each (previous line, line)
** pair executed in lua/capil/ bumps a counter in libFuzzer's extra counters.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capil.h"

#ifndef CAPIL_FUZZ_TARGET
#error "define CAPIL_FUZZ_TARGET"
#endif
#ifndef CAPIL_FUZZ_TARGETS_LUA
#error "define CAPIL_FUZZ_TARGETS_LUA (the path of fuzz/targets.lua)"
#endif

#include "host.h"

static lua_State *L;
static unsigned long runs;

/* Lua line-edge coverage, read by libFuzzer like its own counters. */
#define LUA_COUNTERS (1 << 16)
__attribute__((section("__libfuzzer_extra_counters"), used))
static uint8_t lua_counters[LUA_COUNTERS];
static uint32_t prev_line;

static void line_hook(lua_State *S, lua_Debug *ar) {
  if (!lua_getinfo(S, "S", ar) || strncmp(ar->source, "@lua/capil/", 11) != 0) return;
  uint32_t h = 2166136261u; /* FNV-1a of the file name, then the line */
  for (const char *c = ar->source + 11; *c; c++) h = (h ^ (uint8_t)*c) * 16777619u;
  h = (h ^ (uint32_t)ar->currentline) * 16777619u;
  lua_counters[(h ^ (prev_line >> 1)) & (LUA_COUNTERS - 1)]++;
  prev_line = h;
}

static const char *const INTERNAL[] = {
  "attempt to", "stack traceback", "lua/capil/", "fuzz invariant", NULL
};

/* Message handler: keeps the traceback beside the message, for the report. */
static int msgh(lua_State *S) {
  const char *msg = lua_tostring(S, 1);
  luaL_traceback(S, S, msg ? msg : "(error value is not a string)", 1);
  lua_setfield(S, LUA_REGISTRYINDEX, "capil.fuzz.traceback");
  return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  setenv("CAPIL_EMBEDDED", "1", 1); /* the library as shipped, not the tree */
  L = capil_host_new();
  if (!L) { fprintf(stderr, "fuzz: cannot create the Lua state\n"); abort(); }
  if (luaL_dofile(L, CAPIL_FUZZ_TARGETS_LUA) != LUA_OK) {
    fprintf(stderr, "fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_getfield(L, -1, CAPIL_FUZZ_TARGET);
  if (!lua_isfunction(L, -1)) {
    fprintf(stderr, "fuzz: no target '%s' in %s\n", CAPIL_FUZZ_TARGET, CAPIL_FUZZ_TARGETS_LUA);
    abort();
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "capil.fuzz.target");
  lua_settop(L, 0);
  /* coroutines inherit it; the sandbox puts its own on the recipe's */
  lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_settop(L, 0);
  prev_line = 0;
  lua_pushcfunction(L, msgh);
  lua_getfield(L, LUA_REGISTRYINDEX, "capil.fuzz.target");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 1) != LUA_OK) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    int internal = msg == NULL;
    for (int i = 0; msg && INTERNAL[i]; i++)
      if (strstr(msg, INTERNAL[i])) internal = 1;
    if (internal) {
      lua_getfield(L, LUA_REGISTRYINDEX, "capil.fuzz.traceback");
      fprintf(stderr, "fuzz: %s: internal Lua error:\n%s\n", CAPIL_FUZZ_TARGET,
              lua_tostring(L, -1));
      abort();
    }
  }
  lua_settop(L, 0);
  /* the garbage of an input does not outlive many more */
  if (++runs % 256 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
