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
**
** targets.lua may require("capil.fuzz"): a few helpers the library has no
** use for (inflate, deterministic noise, mkfifo, symlink, a truncation
** racing a reader, a pipe fed by a thread), in C here so that no external tool and no slow Lua loop runs
** per input.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

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

/* ---------------------------------------------------------------------- */
/* capil.fuzz: helpers for targets.lua                                     */
/* ---------------------------------------------------------------------- */

/* inflate(data, max) -> string | nil, msg: one RFC 1950 (zlib) stream that
** must end within data and inflate to at most max bytes. */
static int f_inflate(lua_State *S) {
  size_t n;
  const char *in = luaL_checklstring(S, 1, &n);
  lua_Integer max = luaL_checkinteger(S, 2);
  luaL_argcheck(S, max >= 0 && max <= (1 << 24), 2, "max out of range");
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(S, &b, (size_t)max + 1);
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit(&z) != Z_OK) return luaL_error(S, "inflateInit failed");
  z.next_in = (unsigned char *)in;
  z.avail_in = (uInt)n;
  z.next_out = out;
  z.avail_out = (uInt)max + 1;
  int rc = inflate(&z, Z_FINISH);
  size_t got = z.total_out;
  inflateEnd(&z);
  if (rc != Z_STREAM_END) {
    lua_pushnil(S);
    lua_pushfstring(S, "inflate: %s (%d)", z.msg ? z.msg : "no stream end", rc);
    return 2;
  }
  if (got > (size_t)max) { lua_pushnil(S); lua_pushliteral(S, "inflate: too long"); return 2; }
  luaL_pushresultsize(&b, got);
  return 1;
}

/* noise(seed, n) -> n bytes of xorshift64 output: incompressible, and the
** same for the same seed. */
static int f_noise(lua_State *S) {
  uint64_t x = (uint64_t)luaL_checkinteger(S, 1) * 0x9E3779B97F4A7C15ull + 1;
  lua_Integer n = luaL_checkinteger(S, 2);
  luaL_argcheck(S, n >= 0 && n <= (1 << 26), 2, "n out of range");
  luaL_Buffer b;
  unsigned char *p = (unsigned char *)luaL_buffinitsize(S, &b, (size_t)n);
  for (lua_Integer i = 0; i < n; i++) {
    if (i % 8 == 0) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; }
    p[i] = (unsigned char)(x >> (8 * (i % 8)));
  }
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* mkfifo(path) -> true | nil, msg */
static int f_mkfifo(lua_State *S) {
  const char *path = luaL_checkstring(S, 1);
  if (mkfifo(path, 0600) != 0) {
    lua_pushnil(S);
    lua_pushfstring(S, "mkfifo %s: %s", path, strerror(errno));
    return 2;
  }
  lua_pushboolean(S, 1);
  return 1;
}

/* symlink(target, path) -> true | nil, msg */
static int f_symlink(lua_State *S) {
  const char *target = luaL_checkstring(S, 1), *path = luaL_checkstring(S, 2);
  if (symlink(target, path) != 0) {
    lua_pushnil(S);
    lua_pushfstring(S, "symlink %s: %s", path, strerror(errno));
    return 2;
  }
  lua_pushboolean(S, 1);
  return 1;
}

/* truncate_on_read(path, size) -> handle: a thread that truncates path to
** size as soon as something reads it (inotify IN_ACCESS), so that a reader
** that already took its size sees a shorter file. handle:finish() stops the
** thread and returns whether it truncated. When exactly the truncation
** lands among the reader's calls is up to the scheduler: a check of the
** result must hold for every interleaving. */
#define RACER_MT "capil.fuzz.racer"
typedef struct {
  pthread_t tid;
  int ino, wake[2], running, fired;
  char path[4096];
  off_t size;
} Racer;

static void *racer_main(void *arg) {
  Racer *r = arg;
  struct pollfd p[2] = {{r->ino, POLLIN, 0}, {r->wake[0], POLLIN, 0}};
  while (poll(p, 2, -1) < 0 && errno == EINTR) {}
  if (p[0].revents & POLLIN) r->fired = truncate(r->path, r->size) == 0;
  return NULL;
}

static int racer_finish(lua_State *S) {
  Racer *r = luaL_checkudata(S, 1, RACER_MT);
  if (r->running) {
    char c = 1;
    while (write(r->wake[1], &c, 1) < 0 && errno == EINTR) {}
    pthread_join(r->tid, NULL);
    r->running = 0;
  }
  if (r->ino >= 0) { close(r->ino); r->ino = -1; }
  if (r->wake[0] >= 0) { close(r->wake[0]); close(r->wake[1]); r->wake[0] = r->wake[1] = -1; }
  lua_pushboolean(S, r->fired);
  return 1;
}

static int f_truncate_on_read(lua_State *S) {
  const char *path = luaL_checkstring(S, 1);
  lua_Integer size = luaL_checkinteger(S, 2);
  luaL_argcheck(S, strlen(path) < 4096, 1, "path too long");
  Racer *r = lua_newuserdatauv(S, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  r->ino = r->wake[0] = r->wake[1] = -1;
  luaL_setmetatable(S, RACER_MT);
  strcpy(r->path, path);
  r->size = (off_t)size;
  r->ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (r->ino < 0 || inotify_add_watch(r->ino, path, IN_ACCESS) < 0 || pipe(r->wake) != 0)
    return luaL_error(S, "truncate_on_read %s: %s", path, strerror(errno));
  if (pthread_create(&r->tid, NULL, racer_main, r) != 0)
    return luaL_error(S, "truncate_on_read: cannot start a thread");
  r->running = 1;
  return 1;
}

/* feed_pipe(path, count, chunk) -> fd, handle: a thread writing the first
** `count` bytes of path into a pipe in writes of `chunk` bytes (so the
** reader sees short reads), then closing it; fd is the read end (the
** caller's to read; handle:finish() closes it and joins). A stream source
** as capil's ssh session:stream hands the VMDK writer. */
#define FEEDER_MT "capil.fuzz.feeder"
typedef struct {
  pthread_t tid;
  int src, rfd, wfd, running;
  size_t count, chunk;
} Feeder;

static void *feeder_main(void *arg) {
  Feeder *f = arg;
  char buf[65536];
  size_t left = f->count;
  while (left > 0) {
    size_t want = left < f->chunk ? left : f->chunk;
    if (want > sizeof buf) want = sizeof buf;
    ssize_t n = read(f->src, buf, want);
    if (n <= 0) break;
    for (ssize_t put = 0; put < n;) {
      ssize_t w = write(f->wfd, buf + put, (size_t)(n - put));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) goto out;          /* EPIPE: the reader stopped */
      put += w;
    }
    left -= (size_t)n;
  }
out:
  close(f->wfd);
  f->wfd = -1;
  return NULL;
}

static int feeder_finish(lua_State *S) {
  Feeder *f = luaL_checkudata(S, 1, FEEDER_MT);
  if (f->rfd >= 0) { close(f->rfd); f->rfd = -1; }
  if (f->running) { pthread_join(f->tid, NULL); f->running = 0; }
  if (f->src >= 0) { close(f->src); f->src = -1; }
  return 0;
}

static int f_feed_pipe(lua_State *S) {
  const char *path = luaL_checkstring(S, 1);
  lua_Integer count = luaL_checkinteger(S, 2), chunk = luaL_checkinteger(S, 3);
  luaL_argcheck(S, count >= 0, 2, "count must be 0 or more");
  luaL_argcheck(S, chunk >= 1, 3, "chunk must be 1 or more");
  Feeder *f = lua_newuserdatauv(S, sizeof *f, 0);
  memset(f, 0, sizeof *f);
  f->src = f->rfd = f->wfd = -1;
  luaL_setmetatable(S, FEEDER_MT);
  f->count = (size_t)count;
  f->chunk = (size_t)chunk;
  int fds[2];
  f->src = open(path, O_RDONLY | O_CLOEXEC);
  if (f->src < 0 || pipe(fds) != 0) return luaL_error(S, "feed_pipe %s: %s", path, strerror(errno));
  f->rfd = fds[0];
  f->wfd = fds[1];
  if (pthread_create(&f->tid, NULL, feeder_main, f) != 0) return luaL_error(S, "feed_pipe: cannot start a thread");
  f->running = 1;
  lua_pushinteger(S, f->rfd);
  lua_insert(S, -2);
  return 2;
}

/* A handle's metatable: finish() as its one method and its __gc. */
static void handle_mt(lua_State *S, const char *name, lua_CFunction finish) {
  if (luaL_newmetatable(S, name)) {
    lua_pushcfunction(S, finish);
    lua_setfield(S, -2, "__gc");
    lua_newtable(S);
    lua_pushcfunction(S, finish);
    lua_setfield(S, -2, "finish");
    lua_setfield(S, -2, "__index");
  }
  lua_pop(S, 1);
}

static int open_fuzz(lua_State *S) {
  static const luaL_Reg funcs[] = {
    {"inflate", f_inflate}, {"noise", f_noise}, {"mkfifo", f_mkfifo}, {"symlink", f_symlink},
    {"truncate_on_read", f_truncate_on_read}, {"feed_pipe", f_feed_pipe}, {NULL, NULL}
  };
  handle_mt(S, FEEDER_MT, feeder_finish);
  handle_mt(S, RACER_MT, racer_finish);
  luaL_newlib(S, funcs);
  return 1;
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
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open_fuzz);
  lua_setfield(L, -2, "capil.fuzz");
  lua_pop(L, 1);
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
