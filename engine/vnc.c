/*
** vnc.c — capil.core.vnc: the client half of RFB (VNC), enough to type boot
** commands: the version handshake (3.3, 3.7, 3.8), security types None and
** VNC Authentication (DES challenge), ClientInit/ServerInit, and KeyEvent
** messages. Server messages after the handshake are drained and ignored.
** Every blocking step has a deadline and polls Ctrl-C; the password never
** appears in a message.
*/
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "capil.h"

#define SESSION_MT "capil.sys.vnc.Session"

typedef struct {
  int fd;
  int minor;             /* protocol version agreed: 3, 7 or 8 */
  int width, height;
  double timeout;        /* seconds, for key events */
  char where[128];       /* "host:port", for messages */
  char name[256];        /* the desktop name from ServerInit (truncated) */
} Session;

/* ---------------------------------------------------------------------- */
/* I/O with deadlines                                                      */
/* ---------------------------------------------------------------------- */

/* Waits for `events` until `deadline` (absolute); NULL when ready, else a code. */
static const char *wait_fd(int fd, short events, double deadline) {
  for (;;) {
    if (capil_interrupted()) return "EINTR";
    double left = deadline - capil_now();
    if (left <= 0) return "ETIMEDOUT";
    int ms = left * 1000 < 100 ? (int)(left * 1000) + 1 : 100;
    struct pollfd p = {fd, events, 0};
    int r = poll(&p, 1, ms);
    if (r > 0) return NULL;
    if (r < 0 && errno != EINTR) return "EIO";
  }
}

/* Reads exactly n bytes; NULL on success, else a code ("EOF" when the server
** closed the connection). *got tells how many bytes did arrive. */
static const char *read_n(Session *s, void *buf, size_t n, double deadline, size_t *got) {
  size_t have = 0;
  const char *e = NULL;
  while (have < n) {
    ssize_t r = recv(s->fd, (char *)buf + have, n - have, 0);
    if (r > 0) { have += (size_t)r; continue; }
    if (r == 0) { e = "EOF"; break; }
    if (errno != EAGAIN && errno != EINTR) { e = capil_errno_code(errno); break; }
    if ((e = wait_fd(s->fd, POLLIN, deadline))) break;
  }
  if (got) *got = have;
  return e;
}

/* Writes all n bytes (never raising SIGPIPE); NULL or a code. */
static const char *write_n(Session *s, const void *buf, size_t n, double deadline) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = send(s->fd, p, n, MSG_NOSIGNAL);
    if (w > 0) { p += w; n -= (size_t)w; continue; }
    if (w < 0 && errno != EAGAIN && errno != EINTR) return capil_errno_code(errno);
    const char *e = wait_fd(s->fd, POLLOUT, deadline);
    if (e) return e;
  }
  return NULL;
}

static const char *why(const char *code) {
  if (strcmp(code, "ETIMEDOUT") == 0) return "timed out";
  if (strcmp(code, "EINTR") == 0) return "interrupted";
  if (strcmp(code, "EOF") == 0) return "connection closed by the server";
  if (strcmp(code, "EPIPE") == 0) return "connection closed by the server (broken pipe)";
  if (strcmp(code, "ECONNRESET") == 0) return "connection reset by the server";
  return code;
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void close_session(Session *s) {
  if (s->fd >= 0) { close(s->fd); s->fd = -1; }
}

/* Closes the session and pushes the failure triple; an EOF in the middle of
** the handshake is reported as ECONNRESET. */
static int fail_io(lua_State *L, Session *s, const char *code, const char *during) {
  close_session(s);
  return capil_fail(L, strcmp(code, "EOF") == 0 ? "ECONNRESET" : code, "vnc: %s: %s: %s",
                    s->where, during, why(code));
}

/* Appends `n` received bytes to a buffer as printable text ("RFB\x0a..."). */
static void quote(luaL_Buffer *b, const unsigned char *p, size_t n) {
  luaL_addchar(b, '"');
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '\n') luaL_addstring(b, "\\n");
    else if (p[i] == '\r') luaL_addstring(b, "\\r");
    else if (p[i] == '"' || p[i] == '\\') { luaL_addchar(b, '\\'); luaL_addchar(b, (char)p[i]); }
    else if (isprint(p[i])) luaL_addchar(b, (char)p[i]);
    else { char x[8]; snprintf(x, sizeof x, "\\x%02x", p[i]); luaL_addstring(b, x); }
  }
  luaL_addchar(b, '"');
}

/* Reads a u32-length-prefixed reason string (3.3 refusals, 3.8 failures) onto
** the stack (at most 1 KiB kept); pushes "" when it cannot be read. */
static void push_reason(lua_State *L, Session *s, double deadline) {
  unsigned char len4[4];
  if (read_n(s, len4, 4, deadline, NULL)) { lua_pushliteral(L, ""); return; }
  uint32_t len = be32(len4);
  char buf[1024];
  size_t keep = len < sizeof buf ? len : sizeof buf, got = 0;
  read_n(s, buf, keep, deadline, &got);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  while (got > 0 && !isgraph((unsigned char)buf[got - 1])) got--;
  for (size_t i = 0; i < got; i++) luaL_addchar(&b, isprint((unsigned char)buf[i]) ? buf[i] : ' ');
  luaL_pushresult(&b);
}

/* ---------------------------------------------------------------------- */
/* VNC Authentication                                                      */
/* ---------------------------------------------------------------------- */

/* The response to a 16-byte challenge: DES-ECB under the password (first 8
** bytes, zero-padded), each key byte bit-reversed as VNC does. OpenSSL 3's
** default provider has no single DES; triple DES with K|K|K is single DES. */
static int des_response(const char *pw, size_t pwlen, const unsigned char challenge[16], unsigned char out[16]) {
  unsigned char key[24] = {0};
  for (size_t i = 0; i < 8; i++) {
    unsigned char c = i < pwlen ? (unsigned char)pw[i] : 0, r = 0;
    for (int bit = 0; bit < 8; bit++) if (c & (1u << bit)) r |= (unsigned char)(0x80u >> bit);
    key[i] = key[i + 8] = key[i + 16] = r;
  }
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int n1 = 0, n2 = 0;
  int ok = ctx && EVP_EncryptInit_ex(ctx, EVP_des_ede3_ecb(), NULL, key, NULL) == 1 &&
           EVP_CIPHER_CTX_set_padding(ctx, 0) == 1 &&
           EVP_EncryptUpdate(ctx, out, &n1, challenge, 16) == 1 &&
           EVP_EncryptFinal_ex(ctx, out + n1, &n2) == 1 && n1 + n2 == 16;
  EVP_CIPHER_CTX_free(ctx);
  memset(key, 0, sizeof key);
  return ok;
}

static const char *security_name(int t) {
  switch (t) {
    case 1: return "None";
    case 2: return "VNC Authentication";
    case 5: return "RA2";
    case 6: return "RA2ne";
    case 16: return "Tight";
    case 18: return "TLS";
    case 19: return "VeNCrypt";
    case 20: return "SASL";
    case 30: return "Apple";
    default: return NULL;
  }
}

/* ---------------------------------------------------------------------- */
/* Connecting                                                              */
/* ---------------------------------------------------------------------- */

/* TCP connect with a deadline; 0 or an errno value (ETIMEDOUT, EINTR...). */
static int tcp_connect(Session *s, const char *host, int port, double deadline, const char **gai_err) {
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  int g = getaddrinfo(host, ps, &hints, &res);
  if (g != 0) { *gai_err = gai_strerror(g); return -1; }
  s->fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int e = s->fd < 0 ? errno : 0;
  if (!e && connect(s->fd, res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS) e = errno;
  freeaddrinfo(res);
  if (!e) {
    const char *w = wait_fd(s->fd, POLLOUT, deadline);
    if (w) e = strcmp(w, "EINTR") == 0 ? EINTR : ETIMEDOUT;
    else {
      socklen_t el = sizeof e;
      getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &el);
    }
  }
  if (e) close_session(s);
  else {
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return e;
}

/*
** vnc.connect{host=, port=, password=?, timeout=10, shared=true}
**   -> session | nil, msg, code
** Codes: ECONNREFUSED, ETIMEDOUT, ENOTFOUND, ECONNRESET, EINTR, VNC_PROTOCOL
** (not an RFB server, or it refused us), VNC_NOAUTH (no security type in
** common), VNC_AUTH (password missing or rejected).
*/
static int l_connect(lua_State *L) {
  static const char *const opts[] = {"host", "port", "password", "timeout", "shared", NULL};
  capil_check_options(L, 1, "vnc.connect", opts);
  const char *host = capil_opt_string(L, 1, "vnc.connect", "host", NULL, NULL);
  lua_Integer port = capil_opt_integer(L, 1, "vnc.connect", "port", 0);
  size_t pwlen = 0;
  const char *pw = capil_opt_string(L, 1, "vnc.connect", "password", NULL, &pwlen);
  double timeout = capil_opt_number(L, 1, "vnc.connect", "timeout", 10);
  int shared = capil_opt_boolean(L, 1, "vnc.connect", "shared", 1);
  if (!host) return luaL_error(L, "vnc.connect: option 'host' is required");
  if (port <= 0 || port > 65535) return luaL_error(L, "vnc.connect: option 'port' must be 1-65535");
  if (timeout <= 0) return luaL_error(L, "vnc.connect: option 'timeout' must be positive");
  double deadline = capil_now() + timeout;

  Session *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->fd = -1;
  s->timeout = timeout;
  luaL_setmetatable(L, SESSION_MT);
  snprintf(s->where, sizeof s->where, "%s:%d", host, (int)port);

  const char *gai = NULL;
  int e = tcp_connect(s, host, (int)port, deadline, &gai);
  if (e < 0) return capil_fail(L, "ENOTFOUND", "vnc: %s: %s", s->where, gai);
  if (e == ETIMEDOUT) return capil_fail(L, "ETIMEDOUT", "vnc: %s: connecting: timed out", s->where);
  if (e == EINTR) return capil_fail(L, "EINTR", "vnc: %s: connecting: interrupted", s->where);
  if (e) return capil_fail_errno(L, e, "vnc: %s", s->where);

  /* ProtocolVersion: "RFB 003.008\n" */
  unsigned char banner[12];
  size_t got = 0;
  const char *c = read_n(s, banner, sizeof banner, deadline, &got);
  /* a short answer that ends or stalls is still worth showing */
  int partial = c && got > 0 && (strcmp(c, "EOF") == 0 || strcmp(c, "ETIMEDOUT") == 0);
  if (c && !partial) return fail_io(L, s, c, "waiting for the RFB banner");
  int major = 0, minor = 0;
  if (c || memcmp(banner, "RFB ", 4) != 0 || banner[11] != '\n' ||
      sscanf((const char *)banner + 4, "%3d.%3d", &major, &minor) != 2 || major != 3) {
    close_session(s);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    quote(&b, banner, got);
    luaL_pushresult(&b);
    return capil_fail(L, "VNC_PROTOCOL", "vnc: %s: not an RFB 3.x server: it sent %s%s", s->where,
                      lua_tostring(L, -1), !c ? "" : strcmp(c, "EOF") == 0 ? " and closed the connection"
                                                                          : " and then nothing");
  }
  s->minor = minor >= 8 ? 8 : minor == 7 ? 7 : 3;
  char reply[13];
  snprintf(reply, sizeof reply, "RFB 003.%03d\n", s->minor);
  if ((c = write_n(s, reply, 12, deadline))) return fail_io(L, s, c, "sending the protocol version");

  /* Security */
  int type = 0;
  unsigned char u4[4];
  if (s->minor == 3) {
    if ((c = read_n(s, u4, 4, deadline, NULL))) return fail_io(L, s, c, "reading the security type");
    uint32_t t = be32(u4);
    if (t == 0) {
      push_reason(L, s, deadline);
      close_session(s);
      return capil_fail(L, "VNC_PROTOCOL", "vnc: %s: the server refused the connection: %s", s->where,
                        lua_tostring(L, -1));
    }
    type = (int)t;
    if (type != 1 && type != 2) {
      close_session(s);
      const char *nm = security_name(type);
      return capil_fail(L, "VNC_NOAUTH", "vnc: %s: no supported security type (capil: None, VNC Authentication; "
                        "the server requires: %d%s%s)", s->where, type, nm ? " " : "", nm ? nm : "");
    }
  } else {
    unsigned char n;
    if ((c = read_n(s, &n, 1, deadline, NULL))) return fail_io(L, s, c, "reading the security types");
    if (n == 0) {
      push_reason(L, s, deadline);
      close_session(s);
      return capil_fail(L, "VNC_PROTOCOL", "vnc: %s: the server refused the connection: %s", s->where,
                        lua_tostring(L, -1));
    }
    unsigned char types[255];
    if ((c = read_n(s, types, n, deadline, NULL))) return fail_io(L, s, c, "reading the security types");
    int has_none = 0, has_vnc = 0;
    for (int i = 0; i < n; i++) {
      if (types[i] == 1) has_none = 1;
      if (types[i] == 2) has_vnc = 1;
    }
    if (has_vnc && (pw || !has_none)) type = 2;
    else if (has_none) type = 1;
    else {
      close_session(s);
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (int i = 0; i < n; i++) {
        const char *nm = security_name(types[i]);
        lua_pushfstring(L, "%s%d%s%s", i ? ", " : "", (int)types[i], nm ? " " : "", nm ? nm : "");
        luaL_addvalue(&b);
      }
      luaL_pushresult(&b);
      return capil_fail(L, "VNC_NOAUTH", "vnc: %s: no supported security type (capil: None, VNC Authentication; "
                        "the server offers: %s)", s->where, lua_tostring(L, -1));
    }
    unsigned char t8 = (unsigned char)type;
    if ((c = write_n(s, &t8, 1, deadline))) return fail_io(L, s, c, "choosing the security type");
  }

  if (type == 2) {
    if (!pw) {
      close_session(s);
      return capil_fail(L, "VNC_AUTH", "vnc: %s: the server requires a password and none was given", s->where);
    }
    unsigned char challenge[16], response[16];
    if ((c = read_n(s, challenge, 16, deadline, NULL))) return fail_io(L, s, c, "reading the auth challenge");
    if (!des_response(pw, pwlen, challenge, response)) {
      close_session(s);
      return capil_fail(L, "EIO", "vnc: %s: DES (OpenSSL) is not available", s->where);
    }
    c = write_n(s, response, 16, deadline);
    memset(response, 0, sizeof response);
    if (c) return fail_io(L, s, c, "sending the auth response");
  }

  /* SecurityResult: always in 3.8, only after VNC Authentication before */
  if (type == 2 || s->minor == 8) {
    if ((c = read_n(s, u4, 4, deadline, NULL))) {
      /* 3.3/3.7 servers just close the connection on a wrong password */
      if (strcmp(c, "EOF") == 0 && type == 2) {
        close_session(s);
        return capil_fail(L, "VNC_AUTH", "vnc: %s: authentication failed: the server closed the connection",
                          s->where);
      }
      return fail_io(L, s, c, "reading the security result");
    }
    if (be32(u4) != 0) {
      if (s->minor == 8) push_reason(L, s, deadline);
      else lua_pushliteral(L, "");
      close_session(s);
      const char *reason = lua_tostring(L, -1);
      return capil_fail(L, "VNC_AUTH", "vnc: %s: authentication failed: %s", s->where,
                        *reason ? reason : (type == 2 ? "wrong password" : "refused by the server"));
    }
  }

  /* ClientInit, ServerInit */
  unsigned char flag = shared ? 1 : 0;
  if ((c = write_n(s, &flag, 1, deadline))) return fail_io(L, s, c, "sending ClientInit");
  unsigned char init[24];
  if ((c = read_n(s, init, sizeof init, deadline, NULL))) return fail_io(L, s, c, "reading ServerInit");
  s->width = init[0] << 8 | init[1];
  s->height = init[2] << 8 | init[3];
  uint32_t nlen = be32(init + 20);
  if (nlen > 1u << 20) {
    close_session(s);
    return capil_fail(L, "VNC_PROTOCOL", "vnc: %s: ServerInit: a desktop name of %lu bytes", s->where,
                      (unsigned long)nlen);
  }
  size_t keep = nlen < sizeof s->name - 1 ? nlen : sizeof s->name - 1;
  if ((c = read_n(s, s->name, keep, deadline, NULL))) return fail_io(L, s, c, "reading ServerInit");
  s->name[keep] = 0;
  for (uint32_t left = nlen - (uint32_t)keep; left > 0;) {
    char skip[256];
    size_t k = left < sizeof skip ? left : sizeof skip;
    if ((c = read_n(s, skip, k, deadline, NULL))) return fail_io(L, s, c, "reading ServerInit");
    left -= (uint32_t)k;
  }
  return 1;
}

/* ---------------------------------------------------------------------- */
/* The session                                                             */
/* ---------------------------------------------------------------------- */

static Session *check_open(lua_State *L, int i) {
  Session *s = luaL_checkudata(L, i, SESSION_MT);
  if (s->fd < 0) luaL_error(L, "attempt to use a closed VNC session");
  return s;
}

/* Reads and drops whatever the server has sent (we ask for no updates, so
** this is bells and the like); NULL, or "EOF"/an error code when the
** connection is gone. Never blocks. */
static const char *drain(Session *s) {
  char buf[4096];
  for (;;) {
    ssize_t r = recv(s->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) continue;
    if (r == 0) return "EOF";
    if (errno == EAGAIN || errno == EWOULDBLOCK) return NULL;
    if (errno != EINTR) return capil_errno_code(errno);
  }
}

/* s:key(keysym, down) -> true | nil, msg, code  (a KeyEvent message) */
static int s_key(lua_State *L) {
  Session *s = check_open(L, 1);
  lua_Integer sym = luaL_checkinteger(L, 2);
  luaL_argcheck(L, sym >= 0 && sym <= 0xffffffffLL, 2, "a keysym (0 to 0xffffffff)");
  luaL_checktype(L, 3, LUA_TBOOLEAN);
  int down = lua_toboolean(L, 3);
  const char *c = drain(s);
  if (!c) {
    unsigned char msg[8] = {4, (unsigned char)(down ? 1 : 0), 0, 0,
                            (unsigned char)(sym >> 24), (unsigned char)(sym >> 16),
                            (unsigned char)(sym >> 8), (unsigned char)sym};
    c = write_n(s, msg, sizeof msg, capil_now() + s->timeout);
  }
  if (c) {
    if (strcmp(c, "EOF") == 0) c = "ECONNRESET";
    return capil_fail(L, c, "vnc: %s: key event: %s", s->where, why(c));
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int s_close(lua_State *L) {
  close_session(luaL_checkudata(L, 1, SESSION_MT));
  return 0;
}

static int s_tostring(lua_State *L) {
  Session *s = luaL_checkudata(L, 1, SESSION_MT);
  lua_pushfstring(L, "vnc session %s%s", s->where, s->fd < 0 ? " (closed)" : "");
  return 1;
}

/* Fields: width, height, name, version ("3.8"), address ("host:port"),
** closed; anything else is a method. */
static int s_index(lua_State *L) {
  Session *s = luaL_checkudata(L, 1, SESSION_MT);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "width") == 0) lua_pushinteger(L, s->width);
  else if (strcmp(k, "height") == 0) lua_pushinteger(L, s->height);
  else if (strcmp(k, "name") == 0) lua_pushstring(L, s->name);
  else if (strcmp(k, "version") == 0) lua_pushfstring(L, "3.%d", s->minor);
  else if (strcmp(k, "address") == 0) lua_pushstring(L, s->where);
  else if (strcmp(k, "closed") == 0) lua_pushboolean(L, s->fd < 0);
  else {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, k);
  }
  return 1;
}

static const luaL_Reg funcs[] = {{"connect", l_connect}, {NULL, NULL}};
static const luaL_Reg methods[] = {{"key", s_key}, {"close", s_close}, {NULL, NULL}};
static const luaL_Reg meta[] = {{"__gc", s_close}, {"__close", s_close}, {"__tostring", s_tostring},
                                {"__index", s_index}, {NULL, NULL}};

int luaopen_capil_core_vnc(lua_State *L) {
  luaL_newmetatable(L, SESSION_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
