/*
** net.c — capil.core.net: client sockets (TCP and unix) with timeouts, for
** the protocols capil speaks itself: QMP (JSON lines over a unix socket) and
** RFB/VNC (binary over TCP). Every call takes a timeout and polls Ctrl-C.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "capil.h"

#define SOCKET_MT "capil.net.Socket"
#define RBUF 65536

typedef struct {
  int fd;
  char name[128];        /* "unix:/path" or "host:port", for messages */
  size_t rlen;           /* buffered bytes not yet returned */
  char rbuf[RBUF];
} Socket;

static Socket *check_socket(lua_State *L, int i) {
  Socket *s = luaL_checkudata(L, i, SOCKET_MT);
  if (s->fd < 0) luaL_error(L, "attempt to use a closed socket");
  return s;
}

/* Waits for `events` on fd until `deadline` (absolute, <0: forever).
** Returns 0 when ready, else an error code token. */
static const char *wait_fd(int fd, short events, double deadline) {
  for (;;) {
    if (capil_interrupted()) return "EINTR";
    int ms = 100;
    if (deadline >= 0) {
      double left = deadline - capil_now();
      if (left <= 0) return "ETIMEDOUT";
      if (left * 1000 < ms) ms = (int)(left * 1000) + 1;
    }
    struct pollfd p = {fd, events, 0};
    int r = poll(&p, 1, ms);
    if (r > 0) return NULL;
    if (r < 0 && errno != EINTR) return "EIO";
  }
}

static double deadline_of(lua_State *L, int idx, const char *fn, double def) {
  double t = capil_opt_number(L, idx, fn, "timeout", def);
  return t < 0 ? -1 : capil_now() + t;
}

/* net.connect{unix=path | host=, port=, timeout=10} -> Socket | nil, msg, code */
static int l_connect(lua_State *L) {
  static const char *const opts[] = {"unix", "host", "port", "timeout", NULL};
  capil_check_options(L, 1, "net.connect", opts);
  const char *path = capil_opt_string(L, 1, "net.connect", "unix", NULL, NULL);
  const char *host = capil_opt_string(L, 1, "net.connect", "host", NULL, NULL);
  lua_Integer port = capil_opt_integer(L, 1, "net.connect", "port", 0);
  double deadline = deadline_of(L, 1, "net.connect", 10);
  if (!path && !host) return luaL_error(L, "net.connect: give 'unix' or 'host' and 'port'");
  Socket *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->fd = -1;
  s->rlen = 0;
  luaL_setmetatable(L, SOCKET_MT);
  if (path) {
    snprintf(s->name, sizeof s->name, "unix:%s", path);
    struct sockaddr_un a = {0};
    a.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a.sun_path)
      return capil_fail(L, "ENAMETOOLONG", "net.connect: %s: path too long for a socket", path);
    strcpy(a.sun_path, path);
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s->fd < 0) return capil_fail_errno(L, errno, "net.connect: %s", s->name);
    if (connect(s->fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
      int e = errno;
      close(s->fd); s->fd = -1;
      return capil_fail_errno(L, e, "net.connect: %s", path);
    }
  } else {
    snprintf(s->name, sizeof s->name, "%s:%d", host, (int)port);
    char ps[16];
    snprintf(ps, sizeof ps, "%d", (int)port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, ps, &hints, &res);
    if (g != 0) return capil_fail(L, "ENOTFOUND", "net.connect: %s: %s", s->name, gai_strerror(g));
    s->fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int e = s->fd < 0 ? errno : 0;
    if (!e && connect(s->fd, res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS) e = errno;
    freeaddrinfo(res);
    if (e) {
      if (s->fd >= 0) { close(s->fd); s->fd = -1; }
      return capil_fail_errno(L, e, "net.connect: %s", s->name);
    }
  }
  const char *w = wait_fd(s->fd, POLLOUT, deadline);
  int err = 0;
  socklen_t el = sizeof err;
  if (!w) getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
  if (w || err) {
    close(s->fd);
    s->fd = -1;
    if (w) return capil_fail(L, w, "net.connect: %s: %s", s->name,
                             strcmp(w, "EINTR") == 0 ? "interrupted" : "timed out");
    return capil_fail_errno(L, err, "net.connect: %s", s->name);
  }
  return 1;
}

/* s:send(data [, {timeout}]) -> true | nil, msg, code */
static int s_send(lua_State *L) {
  Socket *s = check_socket(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  double deadline = deadline_of(L, 3, "socket:send", 30);
  while (len > 0) {
    ssize_t w = send(s->fd, data, len, MSG_NOSIGNAL);
    if (w > 0) { data += w; len -= (size_t)w; continue; }
    if (w < 0 && errno != EAGAIN && errno != EINTR)
      return capil_fail_errno(L, errno, "socket:send: %s", s->name);
    const char *e = wait_fd(s->fd, POLLOUT, deadline);
    if (e) return capil_fail(L, e, "socket:send: %s: %s", s->name, strcmp(e, "EINTR") == 0 ? "interrupted" : "timed out");
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Fills the read buffer with at least one more byte; 0, or an error code. */
static const char *fill(Socket *s, double deadline, int *eof) {
  *eof = 0;
  for (;;) {
    ssize_t r = recv(s->fd, s->rbuf + s->rlen, RBUF - s->rlen, 0);
    if (r > 0) { s->rlen += (size_t)r; return NULL; }
    if (r == 0) { *eof = 1; return NULL; }
    if (errno != EAGAIN && errno != EINTR) return "ECONNRESET";
    const char *e = wait_fd(s->fd, POLLIN, deadline);
    if (e) return e;
  }
}

static void consume(lua_State *L, Socket *s, size_t n, size_t skip) {
  lua_pushlstring(L, s->rbuf, n);
  memmove(s->rbuf, s->rbuf + n + skip, s->rlen - n - skip);
  s->rlen -= n + skip;
}

/*
** s:receive(what [, {timeout}]) -> data | nil, msg, code ("EOF" at end of stream)
** what: "line" (up to \n, which is dropped), a byte count (exactly n), or
** "any" (whatever is available, at least one byte).
*/
static int s_receive(lua_State *L) {
  Socket *s = check_socket(L, 1);
  double deadline = deadline_of(L, 3, "socket:receive", 30);
  int line = lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "line") == 0;
  int any = lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "any") == 0;
  lua_Integer want = (!line && !any) ? luaL_checkinteger(L, 2) : 0;
  luaL_argcheck(L, line || any || (want >= 0 && want <= RBUF), 2, "\"line\", \"any\" or a count up to 65536");
  for (;;) {
    if (line) {
      char *nl = memchr(s->rbuf, '\n', s->rlen);
      if (nl) { consume(L, s, (size_t)(nl - s->rbuf), 1); return 1; }
      if (s->rlen == RBUF) return capil_fail(L, "EPROTO", "socket:receive: %s: line longer than 64 KiB", s->name);
    } else if (any && s->rlen > 0) {
      consume(L, s, s->rlen, 0);
      return 1;
    } else if (!any && s->rlen >= (size_t)want) {
      consume(L, s, (size_t)want, 0);
      return 1;
    }
    int eof;
    const char *e = fill(s, deadline, &eof);
    if (eof) return capil_fail(L, "EOF", "socket:receive: %s: connection closed by peer", s->name);
    if (e) return capil_fail(L, e, "socket:receive: %s: %s", s->name,
                             strcmp(e, "ETIMEDOUT") == 0 ? "timed out" :
                             strcmp(e, "EINTR") == 0 ? "interrupted" : "connection reset");
  }
}

static int s_close(lua_State *L) {
  Socket *s = luaL_checkudata(L, 1, SOCKET_MT);
  if (s->fd >= 0) { close(s->fd); s->fd = -1; }
  return 0;
}

static int s_tostring(lua_State *L) {
  Socket *s = luaL_checkudata(L, 1, SOCKET_MT);
  lua_pushfstring(L, "socket %s%s", s->name, s->fd < 0 ? " (closed)" : "");
  return 1;
}

static const luaL_Reg funcs[] = {{"connect", l_connect}, {NULL, NULL}};
static const luaL_Reg methods[] = {{"send", s_send}, {"receive", s_receive}, {"close", s_close}, {NULL, NULL}};
static const luaL_Reg meta[] = {{"__gc", s_close}, {"__close", s_close}, {"__tostring", s_tostring},
                                {"__index", NULL}, {NULL, NULL}};

static void create_meta(lua_State *L) {
  luaL_newmetatable(L, SOCKET_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlibtable(L, methods);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

int luaopen_capil_core_net(lua_State *L) {
  create_meta(L);
  luaL_newlib(L, funcs);
  return 1;
}
