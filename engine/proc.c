/*
** proc.c — capil.core.proc: child processes from argv arrays (never a shell
** string), with pipes, timeouts and a distinct timeout result. A Process
** handle kills and reaps its child when closed or collected, so no child
** outlives the handle by accident; children also get SIGTERM if capil dies.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "capil.h"

#define PROCESS_MT "capil.sys.proc.Process"

typedef struct {
  pid_t pid;
  int in, out, err;     /* parent ends of the pipes, or -1 */
  int exited, code, sig;
  int detached, closed;
  char name[64];        /* argv[0], for messages */
} Process;

/* ====================================================================== */
/* Helpers                                                                */
/* ====================================================================== */

static Process *check_process(lua_State *L, int i) {
  Process *p = luaL_checkudata(L, i, PROCESS_MT);
  if (p->closed) luaL_error(L, "attempt to use a closed process");
  return p;
}

static void close_fd(int *fd) {
  if (*fd >= 0) { close(*fd); *fd = -1; }
}

/* Reaps the child if it has exited; returns 1 when it has. */
static int reap(Process *p, int block) {
  if (p->exited) return 1;
  int st;
  pid_t r;
  do r = waitpid(p->pid, &st, block ? 0 : WNOHANG);
  while (r < 0 && errno == EINTR && block);
  if (r == p->pid) {
    p->exited = 1;
    if (WIFEXITED(st)) p->code = WEXITSTATUS(st);
    else if (WIFSIGNALED(st)) { p->sig = WTERMSIG(st); p->code = 128 + p->sig; }
    return 1;
  }
  if (r < 0 && errno == ECHILD) { p->exited = 1; p->code = -1; return 1; }
  return 0;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* SIGTERM, up to `grace` seconds, then SIGKILL; always reaps. */
static void terminate(Process *p, double grace) {
  if (reap(p, 0)) return;
  kill(p->pid, SIGTERM);
  double end = capil_now() + grace;
  while (capil_now() < end) {
    if (reap(p, 0)) return;
    sleep_ms(10);
  }
  kill(p->pid, SIGKILL);
  reap(p, 1);
}

static int signal_number(lua_State *L, int i) {
  if (lua_isnoneornil(L, i)) return SIGTERM;
  if (lua_type(L, i) == LUA_TNUMBER) return (int)luaL_checkinteger(L, i);
  const char *s = luaL_checkstring(L, i);
  if (strncmp(s, "SIG", 3) == 0) s += 3;
  static const struct { const char *n; int v; } sigs[] = {
    {"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT}, {"HUP", SIGHUP},
    {"QUIT", SIGQUIT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"STOP", SIGSTOP},
    {"CONT", SIGCONT}, {NULL, 0}};
  for (int k = 0; sigs[k].n; k++)
    if (strcmp(sigs[k].n, s) == 0) return sigs[k].v;
  return luaL_argerror(L, i, lua_pushfstring(L, "unknown signal '%s'", s));
}

/* ====================================================================== */
/* spawn                                                                  */
/* ====================================================================== */

/* Where a child's stream goes: a pipe to us, inherited, /dev/null, a file. */
enum { IO_INHERIT, IO_PIPE, IO_NULL, IO_FILE, IO_STDOUT };

static int io_mode(lua_State *L, int opts, const char *key, const char **path) {
  *path = NULL;
  const char *v = capil_opt_string(L, opts, "proc.spawn", key, "inherit", NULL);
  if (strcmp(v, "inherit") == 0) return IO_INHERIT;
  if (strcmp(v, "pipe") == 0) return IO_PIPE;
  if (strcmp(v, "null") == 0) return IO_NULL;
  if (strcmp(v, "stdout") == 0 && strcmp(key, "stderr") == 0) return IO_STDOUT;
  *path = v;
  return IO_FILE;
}

/* Child side: never returns. Reports exec failure's errno on `report`. */
static void child(char **argv, char **envp, const char *cwd, int fds[3],
                  int group, int daemon, int report) {
  if (daemon) setsid(); /* its own session: outlives us, no terminal signals */
  else {
    if (group) setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
  }
  /* undo the parent's signal handling */
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGPIPE, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  for (int i = 0; i < 3; i++) {
    if (fds[i] >= 0 && fds[i] != i) {
      if (dup2(fds[i], i) < 0) goto fail;
    }
  }
  if (cwd && chdir(cwd) != 0) goto fail;
  if (envp) execvpe(argv[0], argv, envp);
  else execvp(argv[0], argv);
fail: {
    int e = errno;
    ssize_t w = write(report, &e, sizeof e);
    (void)w;
    _exit(127);
  }
}

/* Collects a string array from the table at idx into a NULL-terminated
** vector kept alive by a userdata pushed on the stack. */
static char **string_vector(lua_State *L, int idx, const char *what, int *n) {
  idx = lua_absindex(L, idx);
  int len = (int)luaL_len(L, idx);
  char **v = lua_newuserdatauv(L, sizeof(char *) * (size_t)(len + 1), 1);
  for (int i = 1; i <= len; i++) {
    lua_rawgeti(L, idx, i);
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "proc.spawn: %s[%d] must be a string, got %s", what, i,
                 luaL_typename(L, -1));
    v[i - 1] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1); /* the table keeps it alive */
  }
  v[len] = NULL;
  if (n) *n = len;
  return v;
}

/* env = {KEY = "value", ...} replaces the environment; env_add = {...} adds
** to (or overrides in) ours. Leaves one value on the stack: the vector, whose
** user value anchors the "K=V" strings it points to. NULL (nothing pushed)
** when neither is given. */
static char **env_vector(lua_State *L, int opts) {
  int top = lua_gettop(L);
  int t_env = capil_opt_field(L, opts, "env");
  int t_add = capil_opt_field(L, opts, "env_add");
  if (t_env != LUA_TNIL && t_env != LUA_TTABLE)
    luaL_error(L, "proc.spawn: option 'env' must be a table");
  if (t_add != LUA_TNIL && t_add != LUA_TTABLE)
    luaL_error(L, "proc.spawn: option 'env_add' must be a table");
  if (t_env == LUA_TNIL && t_add == LUA_TNIL) { lua_settop(L, top); return NULL; }
  int env_idx = top + 1, add_idx = top + 2;
  lua_newtable(L);
  int list = top + 3, n = 0;
  if (t_env == LUA_TNIL) {
    extern char **environ;
    for (char **e = environ; *e; e++) {
      const char *eq = strchr(*e, '=');
      if (!eq) continue;
      lua_pushlstring(L, *e, (size_t)(eq - *e));
      int overridden = lua_rawget(L, add_idx) != LUA_TNIL;
      lua_pop(L, 1);
      if (overridden) continue;
      lua_pushstring(L, *e);
      lua_rawseti(L, list, ++n);
    }
  }
  for (int t = env_idx; t <= add_idx; t++) {
    if (!lua_istable(L, t)) continue;
    lua_pushnil(L);
    while (lua_next(L, t)) {
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
        luaL_error(L, "proc.spawn: env entries must be string = string");
      lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
      lua_rawseti(L, list, ++n);
      lua_pop(L, 1);
    }
  }
  char **v = string_vector(L, list, "env", NULL);
  lua_pushvalue(L, list);
  lua_setiuservalue(L, -2, 1);
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return v;
}

/*
** proc.spawn{argv={...}, env=, env_add=, cwd=, stdin=, stdout=, stderr=,
**            group=false, daemon=false} -> Process | nil, msg, code
** daemon: the child gets its own session and is not signalled when we
** exit (a VM left running on purpose); :detach() it before closing.
** stdin/stdout/stderr: "inherit" (default), "pipe", "null", or a file path
** (stdin reads it, stdout/stderr truncate it); stderr may be "stdout".
*/
static int l_spawn(lua_State *L) {
  static const char *const opts[] = {"argv", "env", "env_add", "cwd", "stdin",
                                     "stdout", "stderr", "group", "daemon", NULL};
  capil_check_options(L, 1, "proc.spawn", opts);
  if (capil_opt_field(L, 1, "argv") != LUA_TTABLE)
    return luaL_error(L, "proc.spawn: option 'argv' must be a table of strings");
  int argc;
  char **argv = string_vector(L, -1, "argv", &argc);
  if (argc == 0) return luaL_error(L, "proc.spawn: argv is empty");
  char **envp = env_vector(L, 1);
  const char *cwd = capil_opt_string(L, 1, "proc.spawn", "cwd", NULL, NULL);
  int group = capil_opt_boolean(L, 1, "proc.spawn", "group", 0);
  int daemon = capil_opt_boolean(L, 1, "proc.spawn", "daemon", 0);
  const char *paths[3];
  int modes[3] = {io_mode(L, 1, "stdin", &paths[0]), io_mode(L, 1, "stdout", &paths[1]),
                  io_mode(L, 1, "stderr", &paths[2])};

  /* the handle first, then the resources (nothing leaks if this raises) */
  Process *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  p->pid = -1;
  p->in = p->out = p->err = -1;
  p->closed = 1; /* until the child exists */
  snprintf(p->name, sizeof p->name, "%s", argv[0]);
  luaL_setmetatable(L, PROCESS_MT);

  int child_fds[3] = {-1, -1, -1}, parent_fds[3] = {-1, -1, -1};
  int report[2] = {-1, -1};
  int err = 0;
  const char *failed = NULL;
  for (int i = 0; i < 3 && !err; i++) {
    int fd = -1;
    switch (modes[i]) {
      case IO_INHERIT: child_fds[i] = i; break;
      case IO_STDOUT: break;
      case IO_NULL:
        fd = open("/dev/null", i == 0 ? O_RDONLY : O_WRONLY | O_CLOEXEC);
        if (fd < 0) { err = errno; failed = "/dev/null"; }
        child_fds[i] = fd;
        break;
      case IO_FILE:
        fd = i == 0 ? open(paths[i], O_RDONLY | O_CLOEXEC)
                    : open(paths[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) { err = errno; failed = paths[i]; }
        child_fds[i] = fd;
        break;
      case IO_PIPE: {
        int pp[2];
        if (pipe2(pp, O_CLOEXEC) != 0) { err = errno; failed = "pipe"; break; }
        child_fds[i] = i == 0 ? pp[0] : pp[1];
        parent_fds[i] = i == 0 ? pp[1] : pp[0];
        break;
      }
    }
  }
  if (modes[2] == IO_STDOUT) child_fds[2] = child_fds[1];
  if (!err && pipe2(report, O_CLOEXEC) != 0) { err = errno; failed = "pipe"; }
  pid_t pid = -1;
  if (!err) {
    pid = fork();
    if (pid == 0) child(argv, envp, cwd, child_fds, group, daemon, report[1]);
    if (pid < 0) { err = errno; failed = "fork"; }
  }
  for (int i = 0; i < 3; i++)
    if (child_fds[i] > 2 && (i != 2 || modes[2] != IO_STDOUT)) close(child_fds[i]);
  if (report[1] >= 0) close(report[1]);
  if (!err) {
    int e = 0;
    ssize_t r;
    do r = read(report[0], &e, sizeof e);
    while (r < 0 && errno == EINTR);
    if (r == (ssize_t)sizeof e) {
      waitpid(pid, NULL, 0);
      err = e;
      failed = cwd && e == ENOENT ? NULL : argv[0];
      pid = -1;
    }
  }
  if (report[0] >= 0) close(report[0]);
  if (err) {
    for (int i = 0; i < 3; i++) if (parent_fds[i] >= 0) close(parent_fds[i]);
    if (!failed)
      return capil_fail_errno(L, err, "proc.spawn: %s (in %s)", argv[0], cwd);
    return capil_fail_errno(L, err, "proc.spawn: %s", failed);
  }
  p->pid = pid;
  p->in = parent_fds[0];
  p->out = parent_fds[1];
  p->err = parent_fds[2];
  p->closed = 0;
  return 1;
}

/* ====================================================================== */
/* Methods                                                                */
/* ====================================================================== */

static void push_status(lua_State *L, Process *p) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, p->code);
  lua_setfield(L, -2, "code");
  if (p->sig) {
    lua_pushinteger(L, p->sig);
    lua_setfield(L, -2, "signal");
  }
}

/* p:wait{timeout=} -> {code, signal} | nil, msg, "ETIMEDOUT" | nil, msg, "EINTR" */
static int p_wait(lua_State *L) {
  Process *p = check_process(L, 1);
  static const char *const opts[] = {"timeout", NULL};
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "process:wait", opts);
  double timeout = capil_opt_number(L, 2, "process:wait", "timeout", -1);
  double end = capil_now() + timeout;
  int delay = 1;
  while (!reap(p, 0)) {
    if (capil_interrupted())
      return capil_fail(L, "EINTR", "process:wait: %s (pid %d): interrupted", p->name, (int)p->pid);
    if (timeout >= 0 && capil_now() >= end)
      return capil_fail(L, "ETIMEDOUT", "process:wait: %s (pid %d): still running after %.1f s",
                        p->name, (int)p->pid, timeout);
    sleep_ms(delay);
    if (delay < 20) delay *= 2;
  }
  push_status(L, p);
  return 1;
}

/* p:kill([sig]) -> true | nil, msg, code. Signals the group for group=true. */
static int p_kill(lua_State *L) {
  Process *p = check_process(L, 1);
  int sig = signal_number(L, 2);
  if (reap(p, 0)) { lua_pushboolean(L, 0); return 1; }
  if (kill(p->pid, sig) != 0)
    return capil_fail_errno(L, errno, "process:kill: %s (pid %d)", p->name, (int)p->pid);
  lua_pushboolean(L, 1);
  return 1;
}

/* p:killgroup([sig]) — signals the process group (spawned with group=true). */
static int p_killgroup(lua_State *L) {
  Process *p = check_process(L, 1);
  int sig = signal_number(L, 2);
  if (kill(-p->pid, sig) != 0 && errno != ESRCH)
    return capil_fail_errno(L, errno, "process:killgroup: %s (pid %d)", p->name, (int)p->pid);
  lua_pushboolean(L, 1);
  return 1;
}

/* p:running() -> boolean */
static int p_running(lua_State *L) {
  Process *p = check_process(L, 1);
  lua_pushboolean(L, !reap(p, 0));
  return 1;
}

/* p:write(data) -> true | nil, msg, code (blocking; stdin must be "pipe") */
static int p_write(lua_State *L) {
  Process *p = check_process(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  if (p->in < 0) return luaL_error(L, "process:write: %s: stdin is not a pipe", p->name);
  while (len > 0) {
    ssize_t w = write(p->in, s, len);
    if (w < 0) {
      if (errno == EINTR && !capil_interrupted()) continue;
      return capil_fail_errno(L, errno, "process:write: %s", p->name);
    }
    s += w;
    len -= (size_t)w;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* p:close_stdin() */
static int p_close_stdin(lua_State *L) {
  Process *p = check_process(L, 1);
  close_fd(&p->in);
  return 0;
}

/*
** p:read{timeout=, input=, offset=} -> "stdout"|"stderr", chunk  (output)
**                                   -> "stdin", n   (n more bytes of input written)
**                                   -> nil          (both pipes at EOF)
**                                   -> nil, msg, "ETIMEDOUT"|"EINTR"
** With `input`, bytes input[offset+1..] are written to the child's stdin as
** the pipe accepts them, so feeding input and draining output cannot deadlock.
*/
static int p_read(lua_State *L) {
  Process *p = check_process(L, 1);
  static const char *const opts[] = {"timeout", "input", "offset", NULL};
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "process:read", opts);
  double timeout = capil_opt_number(L, 2, "process:read", "timeout", -1);
  size_t inlen = 0;
  const char *input = capil_opt_string(L, 2, "process:read", "input", NULL, &inlen);
  lua_Integer offset = capil_opt_integer(L, 2, "process:read", "offset", 0);
  if (offset < 0 || (size_t)offset > inlen)
    return luaL_error(L, "process:read: offset %d is outside the input", (int)offset);
  if (input && p->in < 0)
    return luaL_error(L, "process:read: %s: stdin is not a pipe (or was closed)", p->name);
  if (input) fcntl(p->in, F_SETFL, fcntl(p->in, F_GETFL) | O_NONBLOCK);
  double end = capil_now() + timeout;
  char buf[65536];
  for (;;) {
    struct pollfd fds[3];
    int n = 0;
    int want_in = input && (size_t)offset < inlen;
    if (p->out >= 0) fds[n++] = (struct pollfd){p->out, POLLIN, 0};
    if (p->err >= 0) fds[n++] = (struct pollfd){p->err, POLLIN, 0};
    if (want_in) fds[n++] = (struct pollfd){p->in, POLLOUT, 0};
    if (n == 0) { lua_pushnil(L); return 1; }
    if (capil_interrupted())
      return capil_fail(L, "EINTR", "process:read: %s: interrupted", p->name);
    int wait_ms = 100;
    if (timeout >= 0) {
      double left = end - capil_now();
      if (left <= 0)
        return capil_fail(L, "ETIMEDOUT", "process:read: %s: no output for %.1f s",
                          p->name, timeout);
      if (left * 1000 < wait_ms) wait_ms = (int)(left * 1000) + 1;
    }
    int r = poll(fds, (nfds_t)n, wait_ms);
    if (r < 0 && errno != EINTR) return capil_fail_errno(L, errno, "process:read: %s", p->name);
    if (r <= 0) continue;
    for (int i = 0; i < n; i++) {
      if (!fds[i].revents) continue;
      if (fds[i].fd == p->in) {
        ssize_t w = write(p->in, input + offset, inlen - (size_t)offset);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (w < 0) /* the child closed its stdin: report as all written */
          w = (ssize_t)(inlen - (size_t)offset);
        lua_pushliteral(L, "stdin");
        lua_pushinteger(L, (lua_Integer)w);
        return 2;
      }
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got < 0 && errno == EINTR) continue;
      const char *which = fds[i].fd == p->out ? "stdout" : "stderr";
      if (got <= 0) {
        if (fds[i].fd == p->out) close_fd(&p->out);
        else close_fd(&p->err);
        continue;
      }
      lua_pushstring(L, which);
      lua_pushlstring(L, buf, (size_t)got);
      return 2;
    }
  }
}

/*
** The idempotent close (__gc, __close, :close()): pipes closed, a child that
** still runs gets SIGTERM then SIGKILL after `grace` seconds (default 2), reaped.
** A detached process is left running.
*/
static int p_close(lua_State *L) {
  Process *p = luaL_checkudata(L, 1, PROCESS_MT);
  if (p->closed) return 0;
  double grace = lua_isnumber(L, 2) ? lua_tonumber(L, 2) : 2.0;
  p->closed = 1;
  close_fd(&p->in);
  close_fd(&p->out);
  close_fd(&p->err);
  if (p->pid > 0 && !p->detached) terminate(p, grace);
  return 0;
}

/* p:detach() — the child is no longer killed when the handle closes */
static int p_detach(lua_State *L) {
  Process *p = check_process(L, 1);
  p->detached = 1;
  return 0;
}

static int p_index(lua_State *L) {
  Process *p = luaL_checkudata(L, 1, PROCESS_MT);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "pid") == 0) { lua_pushinteger(L, p->pid); return 1; }
  if (strcmp(k, "name") == 0) { lua_pushstring(L, p->name); return 1; }
  if (strcmp(k, "closed") == 0) { lua_pushboolean(L, p->closed); return 1; }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, k);
  return 1;
}

static int p_tostring(lua_State *L) {
  Process *p = luaL_checkudata(L, 1, PROCESS_MT);
  lua_pushfstring(L, "process %s (pid %d%s)", p->name, (int)p->pid, p->closed ? ", closed" : "");
  return 1;
}

/* proc.alive(pid) -> boolean: is there a process with that pid (kill 0) */
static int l_alive(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  lua_pushboolean(L, pid > 0 && (kill(pid, 0) == 0 || errno == EPERM));
  return 1;
}

/* proc.kill(pid, [sig]) -> true | nil, msg, code — for pids read from pid files */
static int l_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "must be a positive pid");
  int sig = signal_number(L, 2);
  if (kill(pid, sig) != 0) return capil_fail_errno(L, errno, "proc.kill: pid %d", (int)pid);
  lua_pushboolean(L, 1);
  return 1;
}

/* proc.exec(argv) -> only returns on failure: nil, msg, code. Replaces this
** process with argv (PATH searched), as a shell's exec does; the caller
** flushes its own buffers first. */
static int l_exec(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int argc;
  char **argv = string_vector(L, 1, "argv", &argc);
  if (argc == 0) return luaL_error(L, "proc.exec: argv is empty");
  fflush(NULL);
  execvp(argv[0], argv);
  return capil_fail_errno(L, errno, "proc.exec: %s", argv[0]);
}

/* proc.getpid() -> this process's pid */
static int l_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

static const luaL_Reg funcs[] = {
  {"spawn", l_spawn},
  {"alive", l_alive},
  {"kill", l_kill},
  {"getpid", l_getpid},
  {"exec", l_exec},
  {NULL, NULL}
};

static const luaL_Reg methods[] = {
  {"wait", p_wait},
  {"kill", p_kill},
  {"killgroup", p_killgroup},
  {"running", p_running},
  {"write", p_write},
  {"close_stdin", p_close_stdin},
  {"read", p_read},
  {"close", p_close},
  {"detach", p_detach},
  {NULL, NULL}
};

static const luaL_Reg meta[] = {
  {"__index", p_index},
  {"__gc", p_close},
  {"__close", p_close},
  {"__tostring", p_tostring},
  {NULL, NULL}
};

static void create_meta(lua_State *L) {
  luaL_newmetatable(L, PROCESS_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
}

int luaopen_capil_core_proc(lua_State *L) {
  create_meta(L);
  luaL_newlib(L, funcs);
  return 1;
}
