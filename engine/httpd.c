/*
** httpd.c — capil.core.httpd: the small HTTP server that hands installer
** files (kickstart, preseed, ks.json) to a guest. It serves one directory,
** GET and HEAD only, never outside that directory (no "..", no symlinks out),
** from a C thread owned by a Lua handle: closing or collecting the handle
** stops the thread, so files are served only while the build runs.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capil.h"

#define SERVER_MT "capil.httpd.Server"
#define MAX_LOG 256

typedef struct {
  int lfd;              /* listening socket */
  int wake[2];          /* pipe that tells the thread to stop */
  int running;
  pthread_t thread;
  pthread_mutex_t mu;
  char root[PATH_MAX];  /* realpath of the served directory */
  char addr[64];
  int port;
  unsigned long requests;
  struct { char path[200]; int status; } log[MAX_LOG];
  int nlog;
} Server;

/* ====================================================================== */
/* The server thread (pure C: no Lua here)                                */
/* ====================================================================== */

static void record(Server *s, const char *path, int status) {
  pthread_mutex_lock(&s->mu);
  s->requests++;
  if (s->nlog < MAX_LOG) {
    snprintf(s->log[s->nlog].path, sizeof s->log[s->nlog].path, "%.199s", path);
    s->log[s->nlog].status = status;
    s->nlog++;
  }
  pthread_mutex_unlock(&s->mu);
}

static void send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) { if (w < 0 && errno == EINTR) continue; return; }
    p += w;
    n -= (size_t)w;
  }
}

static void reply(int fd, int status, const char *reason, const char *body) {
  char head[256];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n", status, reason, strlen(body));
  send_all(fd, head, (size_t)n);
  send_all(fd, body, strlen(body));
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes %XX in place and drops the query; 0 when the path is unusable. */
static int decode_path(char *p) {
  char *q = strchr(p, '?');
  if (q) *q = '\0';
  char *o = p;
  for (char *i = p; *i; i++) {
    if (*i == '%') {
      int h = hexval(i[1]), l = h >= 0 ? hexval(i[2]) : -1;
      if (h < 0 || l < 0) return 0;
      int c = h * 16 + l;
      if (c == 0) return 0;
      *o++ = (char)c;
      i += 2;
    } else {
      *o++ = *i;
    }
  }
  *o = '\0';
  return p[0] == '/';
}

/* Reads the request head (up to 8 KiB, 10 s), answers, closes. */
static void handle(Server *s, int fd) {
  char req[8192];
  size_t len = 0;
  double deadline = capil_now() + 10;
  while (len < sizeof req - 1) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) {
      if (capil_now() > deadline) { close(fd); return; }
      continue;
    }
    ssize_t r = recv(fd, req + len, sizeof req - 1 - len, 0);
    if (r <= 0) { close(fd); return; }
    len += (size_t)r;
    req[len] = '\0';
    if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
  }
  req[len] = '\0';
  char method[8], target[4096];
  if (sscanf(req, "%7s %4095s", method, target) != 2) {
    reply(fd, 400, "Bad Request", "bad request\n");
    record(s, "?", 400);
    close(fd);
    return;
  }
  int head_only = strcmp(method, "HEAD") == 0;
  if (!head_only && strcmp(method, "GET") != 0) {
    reply(fd, 405, "Method Not Allowed", "only GET and HEAD\n");
    record(s, target, 405);
    close(fd);
    return;
  }
  char shown[200];
  snprintf(shown, sizeof shown, "%.199s", target);
  if (!decode_path(target) || strstr(target, "/../") || strcmp(target + strlen(target) - (strlen(target) >= 3 ? 3 : 0), "/..") == 0) {
    reply(fd, 403, "Forbidden", "forbidden\n");
    record(s, shown, 403);
    close(fd);
    return;
  }
  char full[PATH_MAX], real[PATH_MAX];
  size_t rl = strlen(s->root);
  struct stat st;
  int status = 404;
  if (rl + strlen(target) < sizeof full) {
    memcpy(full, s->root, rl);
    strcpy(full + rl, target);
    if (!realpath(full, real))
      status = 404;
    else if (strncmp(real, s->root, rl) != 0 || (real[rl] != '/' && real[rl] != '\0'))
      status = 403; /* a symlink pointing outside the served directory */
    else if (stat(real, &st) != 0 || !S_ISREG(st.st_mode))
      status = 404;
    else
      status = 200;
  }
  if (status != 200) {
    reply(fd, status, status == 404 ? "Not Found" : "Forbidden", status == 404 ? "not found\n" : "forbidden\n");
    record(s, shown, status);
    close(fd);
    return;
  }
  int in = open(real, O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    reply(fd, 404, "Not Found", "not found\n");
    record(s, shown, 404);
    close(fd);
    return;
  }
  char head[256];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %lld\r\nConnection: close\r\n\r\n", (long long)st.st_size);
  send_all(fd, head, (size_t)n);
  if (!head_only) {
    off_t off = 0;
    while (off < st.st_size) {
      ssize_t w = sendfile(fd, in, &off, (size_t)(st.st_size - off));
      if (w <= 0 && errno != EINTR && errno != EAGAIN) break;
    }
  }
  close(in);
  record(s, shown, 200);
  close(fd);
}

static void *serve(void *arg) {
  Server *s = arg;
  for (;;) {
    struct pollfd p[2] = {{s->lfd, POLLIN, 0}, {s->wake[0], POLLIN, 0}};
    int r = poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || p[1].revents) break;
    if (p[0].revents & POLLIN) {
      int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) handle(s, fd);
    }
  }
  return NULL;
}

/* ====================================================================== */
/* Lua side                                                               */
/* ====================================================================== */

static Server *check_server(lua_State *L, int i) {
  Server *s = luaL_checkudata(L, i, SERVER_MT);
  if (!s->running) luaL_error(L, "attempt to use a closed http server");
  return s;
}

/* Stops the thread and releases the sockets; idempotent (__gc, __close, :close). */
static int srv_close(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (s->running) {
    s->running = 0;
    ssize_t w = write(s->wake[1], "x", 1);
    (void)w;
    pthread_join(s->thread, NULL);
  }
  if (s->lfd >= 0) { close(s->lfd); s->lfd = -1; }
  if (s->wake[0] >= 0) { close(s->wake[0]); s->wake[0] = -1; }
  if (s->wake[1] >= 0) { close(s->wake[1]); s->wake[1] = -1; }
  return 0;
}

/*
** httpd.serve{dir=, bind="127.0.0.1", port=0} -> Server | nil, msg, code
** port 0 picks a free port; server.port and server.address tell which.
*/
static int l_serve(lua_State *L) {
  static const char *const opts[] = {"dir", "bind", "port", NULL};
  capil_check_options(L, 1, "httpd.serve", opts);
  const char *dir = capil_opt_string(L, 1, "httpd.serve", "dir", NULL, NULL);
  const char *bind_addr = capil_opt_string(L, 1, "httpd.serve", "bind", "127.0.0.1", NULL);
  lua_Integer port = capil_opt_integer(L, 1, "httpd.serve", "port", 0);
  if (!dir) return luaL_error(L, "httpd.serve: option 'dir' is required");
  if (port < 0 || port > 65535) return luaL_error(L, "httpd.serve: port must be 0..65535");

  Server *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->lfd = s->wake[0] = s->wake[1] = -1;
  pthread_mutex_init(&s->mu, NULL);
  luaL_setmetatable(L, SERVER_MT);

  struct stat st;
  if (!realpath(dir, s->root) || stat(s->root, &st) != 0 || !S_ISDIR(st.st_mode))
    return capil_fail_errno(L, errno ? errno : ENOTDIR, "httpd.serve: %s", dir);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, bind_addr, &a.sin_addr) != 1)
    return capil_fail(L, "EINVAL", "httpd.serve: bind address '%s' is not an IPv4 address", bind_addr);
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (s->lfd < 0) return capil_fail_errno(L, errno, "httpd.serve: socket");
  setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->lfd, 16) != 0)
    return capil_fail_errno(L, errno, "httpd.serve: %s:%d", bind_addr, (int)port);
  socklen_t al = sizeof a;
  getsockname(s->lfd, (struct sockaddr *)&a, &al);
  s->port = ntohs(a.sin_port);
  snprintf(s->addr, sizeof s->addr, "%s", bind_addr);
  if (pipe2(s->wake, O_CLOEXEC) != 0) return capil_fail_errno(L, errno, "httpd.serve: pipe");
  int err = pthread_create(&s->thread, NULL, serve, s);
  if (err) return capil_fail_errno(L, err, "httpd.serve: thread");
  s->running = 1;
  return 1;
}

/* server:requests() -> { {path=, status=}, ... } in arrival order */
static int srv_requests(lua_State *L) {
  Server *s = check_server(L, 1);
  pthread_mutex_lock(&s->mu);
  lua_createtable(L, s->nlog, 0);
  for (int i = 0; i < s->nlog; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, s->log[i].path);
    lua_setfield(L, -2, "path");
    lua_pushinteger(L, s->log[i].status);
    lua_setfield(L, -2, "status");
    lua_rawseti(L, -2, i + 1);
  }
  pthread_mutex_unlock(&s->mu);
  return 1;
}

static int srv_index(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "port") == 0) { lua_pushinteger(L, s->port); return 1; }
  if (strcmp(k, "address") == 0) { lua_pushstring(L, s->addr); return 1; }
  if (strcmp(k, "root") == 0) { lua_pushstring(L, s->root); return 1; }
  if (strcmp(k, "running") == 0) { lua_pushboolean(L, s->running); return 1; }
  if (strcmp(k, "requests") == 0) { lua_pushcfunction(L, srv_requests); return 1; }
  if (strcmp(k, "close") == 0) { lua_pushcfunction(L, srv_close); return 1; }
  return 0;
}

/* __gc must also free the mutex; close is idempotent */
static int srv_gc(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  srv_close(L);
  pthread_mutex_destroy(&s->mu);
  return 0;
}

static const luaL_Reg funcs[] = {{"serve", l_serve}, {NULL, NULL}};
static const luaL_Reg meta[] = {{"__index", srv_index}, {"__gc", srv_gc}, {"__close", srv_close}, {NULL, NULL}};

int luaopen_capil_core_httpd(lua_State *L) {
  luaL_newmetatable(L, SERVER_MT);
  luaL_setfuncs(L, meta, 0);
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
