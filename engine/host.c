/*
** host.c — the Lua state capil runs in: C modules in package.preload, the
** Lua library found embedded or on disk, Ctrl-C turned into a Lua error that
** unwinds to the cleanups, and the `capil.core.runtime` module.
*/
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include "capil.h"
#include "host.h"

/* The state signals are delivered to (one per process). */
static lua_State *global_L = NULL;
/* Ctrl-C presses seen while the cleanups run. */
static volatile sig_atomic_t cleanup_presses = 0;
static volatile sig_atomic_t cleaning = 0;

/* ====================================================================== */
/* Finding the Lua library                                                */
/* ====================================================================== */

static int is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/*
** Where the Lua files come from: CAPIL_PATH (a source tree), else the source
** tree when this binary is the one its build directory made (so editing a
** .lua file needs no rebuild), else the copy embedded at build time.
** CAPIL_EMBEDDED=1 forces the embedded copy.
*/
static const char *library_root(char *buf, size_t size) {
  const char *env = getenv("CAPIL_PATH");
  if (env && *env) return env;
  env = getenv("CAPIL_EMBEDDED");
  if (env && *env && strcmp(env, "0") != 0) return NULL;
  char exe[PATH_MAX], bindir[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return NULL;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return NULL;
  *slash = '\0';
  if (!realpath(CAPIL_BINARY_DIR, bindir) || strcmp(exe, bindir) != 0) return NULL;
  snprintf(buf, size, "%s/lua/capil", CAPIL_SOURCE_DIR);
  if (!is_dir(buf)) return NULL;
  snprintf(buf, size, "%s", CAPIL_SOURCE_DIR);
  return buf;
}

/* Module name -> path relative to the library root, or NULL when not ours. */
static const char *module_relpath(lua_State *L, const char *name) {
  if (strcmp(name, "capil") == 0) return lua_pushstring(L, "lua/capil/init.lua");
  if (strncmp(name, "capil.", 6) != 0 || strncmp(name, "capil.core.", 11) == 0)
    return NULL;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  const char *rest = name;
  if (strncmp(name, "capil.backends.", 15) == 0) {
    luaL_addstring(&b, "backends/");
    rest = name + 15;
  } else {
    luaL_addstring(&b, "lua/");
  }
  for (const char *c = rest; *c; c++) luaL_addchar(&b, *c == '.' ? '/' : *c);
  luaL_addstring(&b, ".lua");
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

/* package.searchers entry for capil.* modules. */
static int searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  int top = lua_gettop(L);
  const char *rel = module_relpath(L, name);
  if (!rel) { lua_settop(L, top); return 0; }
  lua_getfield(L, LUA_REGISTRYINDEX, "capil.root");
  const char *root = lua_tostring(L, -1);
  if (root) {
    const char *path = lua_pushfstring(L, "%s/%s", root, rel);
    if (!is_file(path)) {
      /* capil.x may also be a directory module: lua/capil/x/init.lua */
      lua_pop(L, 1);
      lua_pushlstring(L, rel, strlen(rel) - 4); /* without ".lua" */
      path = lua_pushfstring(L, "%s/%s/init.lua", root, lua_tostring(L, -1));
      if (!is_file(path)) {
        lua_pushfstring(L, "\n\tno file '%s/%s' (capil library)", root, rel);
        return 1;
      }
    }
    if (luaL_loadfile(L, path) != LUA_OK)
      return luaL_error(L, "error loading module '%s' from '%s':\n\t%s", name,
                        path, lua_tostring(L, -1));
    lua_pushstring(L, path);
    return 2;
  }
  for (const struct capil_embedded *e = capil_embedded_lua; e->module; e++) {
    if (strcmp(e->module, name) != 0) continue;
    const char *chunk = lua_pushfstring(L, "@%s", e->path);
    if (luaL_loadbufferx(L, e->data, e->size, chunk, "t") != LUA_OK)
      return luaL_error(L, "error loading embedded module '%s':\n\t%s", name,
                        lua_tostring(L, -1));
    lua_pushfstring(L, "embedded:%s", e->path);
    return 2;
  }
  lua_pushfstring(L, "\n\tno embedded module '%s'", name);
  return 1;
}

/* ====================================================================== */
/* Interruption                                                           */
/* ====================================================================== */

/*
** Count hook installed by the signal handler: raises "interrupted" in the
** running code, and keeps raising every 1000 instructions, so a pcall that
** swallows the first error cannot keep the program alive. Code that keeps
** swallowing it for a second is not unwound further: the cleanups run from
** the hook and the process exits.
*/
static double stop_first = 0;

static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  double now = capil_now();
  if (stop_first == 0) stop_first = now;
  if (now - stop_first > 1.0) {
    int sig = capil_stop_signal;
    capil_host_cleanup(L, "interrupted");
    fflush(stdout);
    exit(128 + sig);
  }
  lua_sethook(L, stop_hook, LUA_MASKCOUNT, 1000);
  luaL_error(L, "interrupted");
}

/*
** Sandboxed code (recipes, roles, checks) runs in a coroutine with hooks of
** its own, so a signal hooks that coroutine too. It holds no resources, so
** when it is stuck in one C call (a backtracking string.find) and has not
** stopped half a second after the signal, the watchdog ends the process.
*/
static volatile sig_atomic_t sandbox_depth = 0;
static volatile sig_atomic_t watchdog_sig = 0;
static lua_State *volatile sandbox_co = NULL; /* the innermost one running */

/* Hook set on the sandboxed coroutine by a signal: raises at once, and again
** at every instruction after, so nothing in there carries on. */
static void sandbox_stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, sandbox_stop_hook, LUA_MASKCOUNT, 1);
  lua_pushliteral(L, "interrupted");
  lua_error(L);
}

static void on_alarm(int sig) {
  (void)sig;
  if (sandbox_depth > 0 && watchdog_sig) {
    static const char msg[] = "capil: interrupted\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)w;
    _exit(128 + watchdog_sig);
  }
}

static void on_signal(int sig) {
  if (cleaning) {
    cleanup_presses++;
    if (cleanup_presses >= 3) _exit(128 + sig);
    return;
  }
  capil_stop_signal = sig;
  if (sandbox_depth > 0) {
    watchdog_sig = sig;
    struct itimerval half = {{0, 0}, {0, 500000}};
    setitimer(ITIMER_REAL, &half, NULL);
    if (sandbox_co)
      lua_sethook(sandbox_co, sandbox_stop_hook,
                  LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  }
  if (global_L)
    lua_sethook(global_L, stop_hook,
                LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

void capil_host_signals(lua_State *L) {
  global_L = L;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

void capil_host_clear_interrupt(lua_State *L) {
  capil_stop_signal = 0;
  stop_first = 0;
  lua_sethook(L, NULL, 0, 0);
}

/*
** Runs the cleanup stack (lua/capil/sys/cleanup.lua) if anything was registered.
** Ctrl-C during the cleanups is counted, not obeyed, until the third press.
*/
void capil_host_cleanup(lua_State *L, const char *reason) {
  int sig = capil_stop_signal;
  capil_host_clear_interrupt(L);
  cleaning = 1;
  int top = lua_gettop(L);
  /* lua/capil/sys/cleanup.lua keeps itself in the registry (see there) */
  if (lua_getfield(L, LUA_REGISTRYINDEX, "capil.sys.cleanup") == LUA_TTABLE &&
      lua_getfield(L, -1, "run_all") == LUA_TFUNCTION) {
    lua_pushstring(L, reason);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      capil_redact_fputs("capil: cleanup failed: ", stderr);
      capil_redact_fputs(lua_tostring(L, -1), stderr);
      fputc('\n', stderr);
    }
  }
  lua_settop(L, top);
  cleaning = 0;
  capil_stop_signal = sig;
}

/* ====================================================================== */
/* Memory accounting                                                      */
/* ====================================================================== */

/*
** Every allocation of the state passes here: bytes in use are counted, and
** while sandboxed code runs, growth past `mem_limit` fails (Lua then raises
** "not enough memory" in that code, after an emergency collection).
*/
static lua_Alloc base_alloc = NULL;
static void *base_ud = NULL;
static size_t mem_used = 0;
static size_t mem_limit = 0; /* 0: none */

static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  size_t old = ptr ? osize : 0;
  if (nsize > old && mem_limit && mem_used - old + nsize > mem_limit) return NULL;
  void *p = base_alloc(base_ud, ptr, osize, nsize);
  if (p || nsize == 0) mem_used = mem_used >= old ? mem_used - old + nsize : nsize;
  return p;
}

/* ====================================================================== */
/* capil.core.runtime                                                        */
/* ====================================================================== */

/* host.interrupted() -> signal number, or false */
static int host_interrupted(lua_State *L) {
  if (capil_stop_signal) lua_pushinteger(L, capil_stop_signal);
  else lua_pushboolean(L, 0);
  return 1;
}

/* host.sleep(seconds) -> true | nil, "interrupted", "EINTR" */
static int host_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0, 1, "must not be negative");
  double end = capil_now() + s;
  for (;;) {
    if (capil_interrupted()) return capil_fail(L, "EINTR", "sleep: interrupted");
    double left = end - capil_now();
    if (left <= 0) break;
    if (left > 0.05) left = 0.05;
    struct timespec ts = {0, (long)(left * 1e9)};
    nanosleep(&ts, NULL);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/*
** host.sandbox_resume(co, max_bytes, string_methods, ...) -> true, results...
**   | false, error value | false, "yield"
** Starts the fresh coroutine co (made by coroutine.create) as sandboxed
** code: while it runs, the string metatable's __index is string_methods,
** at most max_bytes more may be allocated, and Ctrl-C arms the watchdog.
** All of it is undone before this returns, whatever co did: no hook of
** this thread can run in between, as it could in Lua.
*/
static int host_sandbox_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "thread");
  lua_Integer max = luaL_checkinteger(L, 2);
  luaL_argcheck(L, max > 0, 2, "must be positive");
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_argcheck(L, lua_status(co) == LUA_OK && lua_gettop(co) == 1, 1, "not a fresh coroutine");
  int nargs = lua_gettop(L) - 3;
  if (!lua_checkstack(co, nargs)) return luaL_error(L, "host.sandbox_resume: too many arguments");
  lua_xmove(L, co, nargs);
  lua_pushliteral(L, "");
  if (!lua_getmetatable(L, -1)) return luaL_error(L, "host.sandbox_resume: strings have no metatable");
  int smt = lua_gettop(L);
  lua_getfield(L, smt, "__index"); /* the host's methods, put back below */
  luaL_checkstack(L, LUA_MINSTACK, NULL);

  int saved = smt + 1;

  /* nothing below raises until everything is put back */
  size_t prev_limit = mem_limit;
  size_t limit = mem_used + (size_t)max;
  if (prev_limit == 0 || limit < prev_limit) mem_limit = limit;
  lua_pushliteral(L, "__index");
  lua_pushvalue(L, 3);
  lua_rawset(L, smt);
  lua_State *outer_co = sandbox_co;
  sandbox_co = co;
  sandbox_depth++;
  if (capil_interrupted()) /* a signal came before: co stops at once */
    lua_sethook(co, sandbox_stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);

  int nres = 0;
  int st = lua_resume(co, L, nargs, &nres);

  sandbox_depth--;
  sandbox_co = outer_co;
  if (sandbox_depth == 0) {
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    watchdog_sig = 0;
  }
  lua_pushliteral(L, "__index");
  lua_pushvalue(L, saved);
  lua_rawset(L, smt);
  mem_limit = prev_limit;

  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "yield");
    return 2;
  }
  if (st != LUA_OK) {
    lua_pushboolean(L, 0);
    lua_xmove(co, L, 1);
    return 2;
  }
  if (!lua_checkstack(L, nres + 1)) return luaL_error(L, "host.sandbox_resume: too many results");
  lua_pushboolean(L, 1);
  lua_xmove(co, L, nres);
  return nres + 1;
}

/* host.now() -> monotonic seconds */
static int host_now(lua_State *L) {
  lua_pushnumber(L, capil_now());
  return 1;
}

/* host.library() -> "embedded" | root directory, and the embedded module list */
static int host_library(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "capil.root");
  if (lua_isnil(L, -1)) { lua_pop(L, 1); lua_pushliteral(L, "embedded"); }
  lua_newtable(L);
  int i = 1;
  for (const struct capil_embedded *e = capil_embedded_lua; e->module; e++) {
    lua_pushstring(L, e->module);
    lua_rawseti(L, -2, i++);
  }
  return 2;
}

/* host.embedded_files() -> the paths of the embedded recipes/ and cloudinit/
** files, sorted ("recipes/ubuntu-2004.lua", "cloudinit/user-data", ...) */
static int host_embedded_files(lua_State *L) {
  lua_newtable(L);
  int i = 1;
  for (const struct capil_embedded *e = capil_embedded_data; e->path; e++) {
    lua_pushstring(L, e->path);
    lua_rawseti(L, -2, i++);
  }
  return 1;
}

/* host.embedded_file(path) -> its bytes, or nil when none is embedded: a
** data file ("recipes/ubuntu-2004.lua") or a library file, comments and all
** ("lua/capil/sys/fs.lua", the chunk name of an embedded module without its
** "@": the REPL's help reads the doc comments from it) */
static int host_embedded_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const struct capil_embedded *lists[] = {capil_embedded_data, capil_embedded_lua};
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
    for (const struct capil_embedded *e = lists[i]; e->path; e++) {
      if (strcmp(e->path, path) == 0) {
        lua_pushlstring(L, e->data, e->size);
        return 1;
      }
    }
  }
  lua_pushnil(L);
  return 1;
}

/* host.cdoc() -> {["fs.read"] = "fs.read(path [, {max=bytes}]) -> ...\n..."}:
** the doc comments of the C functions, by the name their first line gives */
static int host_cdoc(lua_State *L) {
  lua_newtable(L);
  for (const char *d = capil_embedded_cdoc; *d; d += strlen(d) + 1) {
    size_t n = strcspn(d, "(");
    lua_pushlstring(L, d, n);
    if (lua_getfield(L, -2, lua_tostring(L, -1)) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushstring(L, d);
      lua_rawset(L, -3);
    } else {
      lua_pop(L, 2); /* the first comment naming a function wins */
    }
  }
  return 1;
}

/* host.exepath() -> absolute path of the running binary */
static int host_exepath(lua_State *L) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return capil_fail_errno(L, errno, "host.exepath");
  lua_pushlstring(L, exe, (size_t)n);
  return 1;
}

/* host.free_port() -> a TCP port on 127.0.0.1 that was free a moment ago */
static int host_free_port(lua_State *L) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return capil_fail_errno(L, errno, "host.free_port: socket");
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    int e = errno;
    close(fd);
    return capil_fail_errno(L, e, "host.free_port: bind 127.0.0.1:0");
  }
  close(fd);
  lua_pushinteger(L, ntohs(a.sin_port));
  return 1;
}

/* host.port_open(ip, port [, timeout]) -> true | nil, msg, code: does a TCP
** connect succeed within timeout seconds (default 1)? IPv4 literal only. */
static int host_port_open(lua_State *L) {
  const char *ip = luaL_checkstring(L, 1);
  int port = (int)luaL_checkinteger(L, 2);
  double timeout = luaL_optnumber(L, 3, 1.0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
    return luaL_argerror(L, 1, "must be an IPv4 address");
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return capil_fail_errno(L, errno, "host.port_open: socket");
  int r = connect(fd, (struct sockaddr *)&a, sizeof a);
  int err = r == 0 ? 0 : errno;
  if (err == EINPROGRESS) {
    struct pollfd p = {fd, POLLOUT, 0};
    int pr = poll(&p, 1, (int)(timeout * 1000));
    if (pr == 0) err = ETIMEDOUT;
    else {
      socklen_t l = sizeof err;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
    }
  }
  close(fd);
  if (err) return capil_fail_errno(L, err, "host.port_open: %s:%d", ip, port);
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg host_funcs[] = {
  {"free_port", host_free_port},
  {"port_open", host_port_open},
  {"interrupted", host_interrupted},
  {"sleep", host_sleep},
  {"now", host_now},
  {"sandbox_resume", host_sandbox_resume},
  {"library", host_library},
  {"exepath", host_exepath},
  {"embedded_files", host_embedded_files},
  {"embedded_file", host_embedded_file},
  {"cdoc", host_cdoc},
  {NULL, NULL}
};

static int luaopen_capil_core_runtime(lua_State *L) {
  luaL_newlib(L, host_funcs);
  lua_pushliteral(L, CAPIL_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, LUA_RELEASE);
  lua_setfield(L, -2, "lua_version");
  return 1;
}

/* ====================================================================== */
/* The state                                                              */
/* ====================================================================== */

lua_State *capil_host_new(void) {
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  /* count from here on: what the state holds already, then every change */
  base_alloc = lua_getallocf(L, &base_ud);
  mem_used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
  lua_setallocf(L, counting_alloc, NULL);
  luaL_openlibs(L);

  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *m = capil_core_modules; m->name; m++) {
    lua_pushcfunction(L, m->func);
    lua_setfield(L, -2, m->name);
  }
  lua_pushcfunction(L, luaopen_capil_core_runtime);
  lua_setfield(L, -2, "capil.core.runtime");
  lua_pop(L, 1);

  char buf[PATH_MAX];
  const char *root = library_root(buf, sizeof buf);
  if (root) lua_pushstring(L, root);
  else lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, "capil.root");

  /* our searcher goes right after package.preload's */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = n; i >= 2; i--) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushcfunction(L, searcher);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
  return L;
}
