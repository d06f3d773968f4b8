/*
** ssh.c — capil.core.ssh: SSH sessions on libssh2 1.10 (OpenSSL backend):
** connect with host-key checking, run commands, move files over SFTP with a
** SHA-256 computed on the fly, and wait for a server's banner.
**
** Every libssh2 call runs non-blocking: the loops here poll the socket in
** slices of at most 100 ms, so each operation honours its timeout and Ctrl-C
** (capil_interrupted) and no call can block forever. Lua is only ever called
** from these loops (exec's on_output, under lua_pcall), never from inside a
** libssh2 frame. Channels and SFTP handles belong to the libssh2 session, which
** the Session userdata owns, so an error raised midway leaks nothing.
*/
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <libssh2.h>
#include <libssh2_sftp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "capil.h"

#define SESSION_MT "capil.sys.ssh.Session"
#define STREAM_MT "capil.sys.ssh.Stream"
#define CHUNK (256 * 1024)     /* SFTP transfer buffer */
#define GRACE 1.0              /* seconds a cleanup step may wait on the server */

#define RSA_EXPLANATION \
  "RSA keys cannot be used: libssh2 1.10 signs only with ssh-rsa (SHA-1), " \
  "which OpenSSH 8.8+ refuses; use an ed25519 or ECDSA key"

typedef struct {
  LIBSSH2_SESSION *ssh;
  LIBSSH2_SFTP *sftp;         /* opened on first put/get */
  int sock;
  int ready;                  /* handshake done: disconnect politely */
  int closed;
  const char *password;       /* during authentication only */
  int port;
  char host[256], user[128];
  char where[420];            /* "user@host:port", for messages */
  char fingerprint[64];       /* "SHA256:..." as ssh-keygen -l prints it */
  struct Stream *stream;      /* a download streaming on its thread: the session is its */
} Session;

/* One operation in progress: its deadline and, once it failed, the error. */
typedef struct {
  Session *s;
  const char *fn;             /* "ssh.exec" */
  char target[512];           /* what the message names: "root@h:22:/tmp/x" */
  double timeout, deadline;   /* deadline is HUGE_VAL without a timeout */
  int idle;                   /* the timeout counts from the last progress */
  const char *code;
  char msg[1536];
  size_t head;                /* msg + head is the detail after "fn: target: " */
} Op;

/* ====================================================================== */
/* Helpers                                                                */
/* ====================================================================== */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc = -1;
static void init_library(void) { init_rc = libssh2_init(0); }

struct Stream;
static void stream_stop(struct Stream *st);

static Session *check_session(lua_State *L, int i) {
  Session *s = luaL_checkudata(L, i, SESSION_MT);
  if (s->closed) luaL_error(L, "attempt to use a closed ssh session");
  if (s->stream) luaL_error(L, "ssh session %s is streaming a download: close the stream first", s->where);
  return s;
}

static void op_init(Op *op, Session *s, const char *fn, double timeout, int idle) {
  memset(op, 0, sizeof *op);
  op->s = s;
  op->fn = fn;
  op->timeout = timeout;
  op->idle = idle;
  op->deadline = timeout > 0 ? capil_now() + timeout : HUGE_VAL;
  snprintf(op->target, sizeof op->target, "%s", s ? s->where : "?");
}

/* Records the failure as "fn: target: detail". Returns -1 for `return`. */
static int op_error(Op *op, const char *code, const char *fmt, ...) {
  va_list ap;
  int n = snprintf(op->msg, sizeof op->msg, "%s: %s: ", op->fn, op->target);
  op->head = n > 0 && (size_t)n < sizeof op->msg ? (size_t)n : 0;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof op->msg)
    vsnprintf(op->msg + n, sizeof op->msg - (size_t)n, fmt, ap);
  va_end(ap);
  op->code = code;
  return -1;
}

static int op_errno(Op *op, int err, const char *what) {
  return op_error(op, capil_errno_code(err), "%s: %s", what, strerror(err));
}

/* SFTP status codes worth a name and an errno-like token. */
static const char *sftp_status(unsigned long st, const char **code) {
  switch (st) {
    case LIBSSH2_FX_NO_SUCH_FILE: case LIBSSH2_FX_NO_SUCH_PATH:
      *code = "ENOENT"; return "no such file or directory";
    case LIBSSH2_FX_PERMISSION_DENIED: *code = "EACCES"; return "permission denied";
    case LIBSSH2_FX_FILE_ALREADY_EXISTS: *code = "EEXIST"; return "file exists";
    case LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM: case LIBSSH2_FX_QUOTA_EXCEEDED:
      *code = "ENOSPC"; return "no space left on the server";
    case LIBSSH2_FX_WRITE_PROTECT: *code = "EROFS"; return "read-only file system";
    case LIBSSH2_FX_NOT_A_DIRECTORY: *code = "ENOTDIR"; return "not a directory";
    default: *code = "SSH_SFTP"; return "SFTP failure";
  }
}

/* Records a libssh2 failure with libssh2's own message (or the SFTP status). */
static int op_ssh(Op *op, int rc, const char *what) {
  char *err = NULL;
  libssh2_session_last_error(op->s->ssh, &err, NULL, 0);
  if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL && op->s->sftp) {
    const char *code;
    unsigned long st = libssh2_sftp_last_error(op->s->sftp);
    const char *text = sftp_status(st, &code);
    return op_error(op, code, "%s: %s (SFTP status %lu)", what, text, st);
  }
  const char *code = "SSH_PROTOCOL";
  if (rc == LIBSSH2_ERROR_SOCKET_DISCONNECT || rc == LIBSSH2_ERROR_SOCKET_RECV ||
      rc == LIBSSH2_ERROR_SOCKET_SEND)
    code = "ECONNRESET";
  return op_error(op, code, "%s: %s", what, err && *err ? err : "unknown libssh2 error");
}

static int op_waitfail(Op *op, const char *code, const char *what) {
  if (strcmp(code, "EINTR") == 0) return op_error(op, code, "%s: interrupted", what);
  return op_error(op, code, "%s: %s %g s", what,
                  op->idle ? "no progress for" : "timed out after", op->timeout);
}

/* For loops that may never block (a command that floods output, a fast
** transfer): fails the operation once Ctrl-C was pressed or time is up. */
static int op_expired(Op *op, const char *what) {
  if (capil_interrupted()) return op_waitfail(op, "EINTR", what);
  if (capil_now() >= op->deadline) return op_waitfail(op, "ETIMEDOUT", what);
  return 0;
}

static void op_progress(Op *op) {
  if (op->idle && op->timeout > 0) op->deadline = capil_now() + op->timeout;
}

/* Waits up to 100 ms (less near the deadline) for `events` on fd. Returns
** NULL to go on, or "ETIMEDOUT" / "EINTR". */
static const char *poll_wait(int fd, short events, double deadline) {
  if (capil_interrupted()) return "EINTR";
  double left = deadline - capil_now();
  if (left <= 0) return "ETIMEDOUT";
  int ms = left < 0.1 ? (int)(left * 1000) + 1 : 100;
  struct pollfd p = {fd, events, 0};
  poll(&p, 1, ms);
  return NULL;
}

/* The classic libssh2 waitsocket: poll in the direction libssh2 is blocked on. */
static const char *op_wait(Op *op) {
  int dir = libssh2_session_block_directions(op->s->ssh);
  short ev = 0;
  if (dir & LIBSSH2_SESSION_BLOCK_INBOUND) ev |= POLLIN;
  if (dir & LIBSSH2_SESSION_BLOCK_OUTBOUND) ev |= POLLOUT;
  return poll_wait(op->s->sock, ev ? ev : POLLIN, op->deadline);
}

/* After EAGAIN: waits for the socket. 0 to retry the call, -1 once the
** operation timed out or was interrupted (recorded in op). */
static int op_block(Op *op, const char *what) {
  const char *w = op_wait(op);
  return w ? op_waitfail(op, w, what) : 0;
}

/* Cleanup steps that may return EAGAIN, run by finish(). */
typedef int (*step_fn)(void *);
static int step_disconnect(void *p) {
  return libssh2_session_disconnect_ex(p, SSH_DISCONNECT_BY_APPLICATION, "closed", "");
}
static int step_session_free(void *p) { return libssh2_session_free(p); }
static int step_sftp_shutdown(void *p) { return libssh2_sftp_shutdown(p); }
static int step_handle_close(void *p) { return libssh2_sftp_close_handle(p); }
static int step_channel_free(void *p) { return libssh2_channel_free(p); }

/* Repeats a cleanup step for at most `grace` seconds; it ignores Ctrl-C (the
** cleanup is what Ctrl-C wants done). Returns the step's last result. */
static int finish(Session *s, step_fn fn, void *arg, double grace) {
  double end = capil_now() + grace;
  int rc;
  while ((rc = fn(arg)) == LIBSSH2_ERROR_EAGAIN && capil_now() < end) {
    struct pollfd p = {s->sock, POLLIN | POLLOUT, 0};
    if (libssh2_session_block_directions(s->ssh) == LIBSSH2_SESSION_BLOCK_INBOUND)
      p.events = POLLIN;
    poll(&p, 1, 20);
  }
  return rc;
}

/* Frees everything the session holds. The server gets a disconnect message if
** it takes it within a second; then the connection is shut down, so the frees
** that follow fail fast instead of waiting for answers. */
static void release(Session *s) {
  if (s->ssh) {
    if (s->ready) finish(s, step_disconnect, s->ssh, GRACE);
    if (s->sock >= 0) shutdown(s->sock, SHUT_RDWR);
    if (s->sftp) finish(s, step_sftp_shutdown, s->sftp, GRACE);
    s->sftp = NULL;
    finish(s, step_session_free, s->ssh, GRACE);
    s->ssh = NULL;
  }
  if (s->sock >= 0) close(s->sock);
  s->sock = -1;
  s->ready = 0;
}

static void sha256_hex(EVP_MD_CTX *md, char out[65]) {
  unsigned char d[32];
  unsigned int n = 0;
  EVP_DigestFinal_ex(md, d, &n);
  for (unsigned i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* "SHA256:<base64 without padding>" of a key blob, as ssh-keygen -l prints. */
static void fingerprint(const unsigned char *key, size_t len, char out[64]) {
  unsigned char d[32], b64[48];
  unsigned int n = 0;
  EVP_Digest(key, len, d, &n, EVP_sha256(), NULL);
  int m = EVP_EncodeBlock(b64, d, 32);
  while (m > 0 && b64[m - 1] == '=') m--;
  snprintf(out, 64, "SHA256:%.*s", m, (const char *)b64);
}

/* Reads the SSH string at *p (length-prefixed); NULL when it overruns. */
static const unsigned char *ssh_string(const unsigned char **p, const unsigned char *end,
                                       uint32_t *len) {
  if (end - *p < 4) return NULL;
  uint32_t n = (uint32_t)(*p)[0] << 24 | (uint32_t)(*p)[1] << 16 | (uint32_t)(*p)[2] << 8 | (*p)[3];
  if ((size_t)(end - *p - 4) < n) return NULL;
  const unsigned char *s = *p + 4;
  *p = s + n;
  *len = n;
  return s;
}

/* Is a public key blob (or OpenSSH key header) of type ssh-rsa? */
static int blob_is_rsa(const unsigned char *p, const unsigned char *end) {
  uint32_t n;
  const unsigned char *t = ssh_string(&p, end, &n);
  return t && n == 7 && memcmp(t, "ssh-rsa", 7) == 0;
}

static int no_prompt(char *buf, int size, int rw, void *u) {
  const char *pw = u;
  if (!pw) return 0;
  int n = (int)strlen(pw);
  if (n > size) n = size;
  memcpy(buf, pw, (size_t)n);
  return n;
}

/* What authentication needs to know of a private key (PEM or OpenSSH text):
** is it RSA, is it encrypted. Read from the unencrypted public part of OpenSSH
** keys, so it works for keys with a passphrase too. */
static int key_info(const char *text, size_t len, const char *passphrase, int *encrypted) {
  static const char openssh[] = "-----BEGIN OPENSSH PRIVATE KEY-----";
  *encrypted = memmem(text, len, "ENCRYPTED", 9) != NULL;  /* PEM and PKCS#8 */
  if (memmem(text, len, "BEGIN RSA PRIVATE KEY", 21)) return 1;
  const char *b = memmem(text, len, openssh, sizeof openssh - 1);
  if (b) {
    unsigned char b64[512], raw[400];
    size_t n = 0;
    for (const char *c = b + sizeof openssh - 1; c < text + len && *c != '-' && n < sizeof b64; c++)
      if (*c != '\n' && *c != '\r' && *c != ' ') b64[n++] = (unsigned char)*c;
    int m = EVP_DecodeBlock(raw, b64, (int)(n & ~(size_t)3));
    if (m < 15 || memcmp(raw, "openssh-key-v1", 15) != 0) return 0;
    const unsigned char *p = raw + 15, *end = raw + m, *cipher;
    uint32_t l;
    if (!(cipher = ssh_string(&p, end, &l))) return 0;
    *encrypted = !(l == 4 && memcmp(cipher, "none", 4) == 0);
    if (!ssh_string(&p, end, &l) || !ssh_string(&p, end, &l) || end - p < 8)
      return 0;                  /* kdf name and options */
    return blob_is_rsa(p + 8, end);  /* after the key count and length: the key's type */
  }
  BIO *bio = BIO_new_mem_buf(text, (int)len);
  EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_prompt, (void *)passphrase) : NULL;
  int rsa = pk && EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA;
  EVP_PKEY_free(pk);
  BIO_free(bio);
  ERR_clear_error();
  return rsa;
}

/* ====================================================================== */
/* TCP                                                                    */
/* ====================================================================== */

/* Non-blocking TCP connection to host:port before `deadline`. Returns the
** socket, or -1 with the failure recorded in op. Dead peers are noticed by
** TCP keepalive (about 90 s), so even calls without a timeout end. */
static int tcp_connect(Op *op, const char *host, int port, double deadline) {
  char service[16];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  int gai = getaddrinfo(host, service, &hints, &res);
  if (gai != 0)
    return op_error(op, "ENOTFOUND", "cannot resolve %s: %s", host, gai_strerror(gai));
  int err = ECONNREFUSED, fd = -1;
  const char *why = NULL;
  for (struct addrinfo *a = res; a && fd < 0 && !why; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) { err = errno; continue; }
    int r = connect(fd, a->ai_addr, a->ai_addrlen);
    err = r == 0 ? 0 : errno;
    while (err == EINPROGRESS) {
      struct pollfd p = {fd, POLLOUT, 0};
      if ((why = poll_wait(fd, POLLOUT, deadline))) break;
      if (poll(&p, 1, 0) == 1) {
        socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
      }
    }
    if (err || why) { close(fd); fd = -1; }
  }
  freeaddrinfo(res);
  if (why) return op_error(op, why, "connect: %s", strcmp(why, "EINTR") ? "timed out" : "interrupted");
  if (fd < 0) return op_errno(op, err, "connect");
  int on = 1, idle = 30, intvl = 10, cnt = 6;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  return fd;
}

/* ====================================================================== */
/* Host keys                                                              */
/* ====================================================================== */

static int knownhost_type(int hostkey_type) {
  switch (hostkey_type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return LIBSSH2_KNOWNHOST_KEY_SSHRSA;
    case LIBSSH2_HOSTKEY_TYPE_DSS: return LIBSSH2_KNOWNHOST_KEY_SSHDSS;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
    case LIBSSH2_HOSTKEY_TYPE_ED25519: return LIBSSH2_KNOWNHOST_KEY_ED25519;
    default: return LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
  }
}

/* Appends "name keytype base64key" to a known_hosts file (OpenSSH format). */
static int known_hosts_append(Op *op, const char *path, const char *name,
                              const unsigned char *key, size_t len) {
  const unsigned char *p = key;
  uint32_t tl;
  const unsigned char *type = ssh_string(&p, key + len, &tl);
  unsigned char *b64 = malloc(4 * (len / 3 + 1) + 1);
  FILE *f = type && b64 ? fopen(path, "a") : NULL;
  int err = type ? errno : EPROTO;
  if (f) EVP_EncodeBlock(b64, key, (int)len);
  int ok = f && fprintf(f, "%s %.*s %s\n", name, (int)tl, (const char *)type, b64) > 0;
  if (f && (fclose(f) != 0 || !ok)) err = errno, ok = 0;
  free(b64);
  return ok ? 0 : op_errno(op, err ? err : EIO, path);
}

/* OpenSSH "accept-new" against a known_hosts file: a known key must match, a
** new host is appended. Lines libssh2 cannot parse (markers, certificates)
** are skipped rather than failing the whole file. */
static int check_known_hosts(Op *op, const char *path, const unsigned char *key,
                             size_t len, int type) {
  Session *s = op->s;
  char name[300];
  if (s->port == 22) snprintf(name, sizeof name, "%s", s->host);
  else snprintf(name, sizeof name, "[%s]:%d", s->host, s->port);
  FILE *f = fopen(path, "r");
  if (!f && errno != ENOENT) return op_errno(op, errno, path);
  LIBSSH2_KNOWNHOSTS *kh = libssh2_knownhost_init(s->ssh);
  if (!kh) { if (f) fclose(f); return op_errno(op, ENOMEM, "known_hosts"); }
  char line[16384];
  while (f && fgets(line, sizeof line, f))
    libssh2_knownhost_readline(kh, line, strlen(line), LIBSSH2_KNOWNHOST_FILE_OPENSSH);
  if (f) fclose(f);
  struct libssh2_knownhost *found = NULL;
  int r = libssh2_knownhost_checkp(kh, name, -1, (const char *)key, len,
                                   LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
                                   knownhost_type(type), &found);
  /* a host known by a key of another type is no new host: an impostor
  ** offering another key type must not pass for one */
  if (r == LIBSSH2_KNOWNHOST_CHECK_NOTFOUND) {
    struct libssh2_knownhost *e = NULL;
    while (libssh2_knownhost_get(kh, &e, e) == 0)
      if (e->name && strcmp(e->name, name) == 0) {
        found = e;
        r = LIBSSH2_KNOWNHOST_CHECK_MISMATCH;
        break;
      }
  }
  int rc = 0;
  if (r == LIBSSH2_KNOWNHOST_CHECK_MISMATCH) {
    char expected[64] = "?";
    unsigned char raw[4096];
    size_t kl = found && found->key ? strlen(found->key) : 0;
    if (kl > 0 && kl < 5000) {
      int m = EVP_DecodeBlock(raw, (const unsigned char *)found->key, (int)kl);
      while (m > 0 && kl > 0 && found->key[--kl] == '=') m--;
      if (m > 0) fingerprint(raw, (size_t)m, expected);
    }
    rc = op_error(op, "SSH_HOSTKEY",
                  "host key for %s has changed: %s has %s, the server offers %s; refusing "
                  "to connect (if the change is expected, remove the old entry: "
                  "ssh-keygen -R '%s' -f %s)",
                  name, path, expected, s->fingerprint, name, path);
  } else if (r == LIBSSH2_KNOWNHOST_CHECK_NOTFOUND) {
    rc = known_hosts_append(op, path, name, key, len);
  } else if (r != LIBSSH2_KNOWNHOST_CHECK_MATCH) {
    rc = op_ssh(op, LIBSSH2_ERROR_KNOWN_HOSTS, "known_hosts check");
  }
  libssh2_knownhost_free(kh);
  return rc;
}

/* host_key: nil or "accept-new" (any key), "SHA256:..." (that key only), or a
** known_hosts path (accept-new on that file). */
static int check_host_key(Op *op, const char *policy) {
  Session *s = op->s;
  size_t len = 0;
  int type = 0;
  const unsigned char *key = (const unsigned char *)libssh2_session_hostkey(s->ssh, &len, &type);
  if (!key) return op_ssh(op, LIBSSH2_ERROR_HOSTKEY_INIT, "no host key");
  fingerprint(key, len, s->fingerprint);
  if (!policy || strcmp(policy, "accept-new") == 0) return 0;
  if (strncmp(policy, "SHA256:", 7) == 0) {
    size_t n = strlen(policy);
    while (n > 7 && policy[n - 1] == '=') n--;
    if (strlen(s->fingerprint) == n && strncmp(policy, s->fingerprint, n) == 0) return 0;
    return op_error(op, "SSH_HOSTKEY", "host key mismatch: expected %.*s, the server offers %s; "
                    "refusing to connect", (int)n, policy, s->fingerprint);
  }
  return check_known_hosts(op, policy, key, len, type);
}

/* ====================================================================== */
/* Authentication                                                         */
/* ====================================================================== */

typedef struct {
  const char *key_path, *key_data, *password, *passphrase;
  size_t key_len;
  int agent;
} Auth;

/* keyboard-interactive: answer every prompt with the password. */
static void kbd_answer(const char *name, int name_len, const char *instr, int instr_len,
                       int n, const LIBSSH2_USERAUTH_KBDINT_PROMPT *prompts,
                       LIBSSH2_USERAUTH_KBDINT_RESPONSE *responses, void **abstract) {
  Session *s = *abstract;
  for (int i = 0; i < n; i++) {
    responses[i].text = s->password ? strdup(s->password) : NULL;
    responses[i].length = responses[i].text ? (unsigned)strlen(responses[i].text) : 0;
  }
}

enum { BY_KEY, BY_PASSWORD, BY_KBDINT };

/* Runs one userauth method to completion: 0 = accepted, 1 = refused, -1 =
** failed (op set). Failures other than a lost connection are SSH_AUTH:
** libssh2 reports a key it cannot decode (a wrong passphrase) as a protocol
** error. `secret` is the key text or the password. */
static int auth_try(Op *op, int method, const char *secret, size_t len, const char *passphrase) {
  static const char *const what[] = {"cannot use the private key", "password authentication",
                                     "keyboard-interactive authentication"};
  Session *s = op->s;
  unsigned ul = (unsigned)strlen(s->user);
  int rc;
  s->password = method == BY_KBDINT ? secret : NULL;  /* for kbd_answer */
  do {
    if (method == BY_KEY)
      rc = libssh2_userauth_publickey_frommemory(s->ssh, s->user, ul, NULL, 0, secret, len,
                                                 passphrase ? passphrase : "");
    else if (method == BY_PASSWORD)
      rc = libssh2_userauth_password_ex(s->ssh, s->user, ul, secret, (unsigned)len, NULL);
    else
      rc = libssh2_userauth_keyboard_interactive_ex(s->ssh, s->user, ul, kbd_answer);
  } while (rc == LIBSSH2_ERROR_EAGAIN && !op_block(op, what[method]));
  s->password = NULL;
  if (op->code) return -1;  /* timed out, interrupted */
  if (rc == 0) return 0;
  if (rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED)
    return 1;
  op_ssh(op, rc, what[method]);
  if (strcmp(op->code, "ECONNRESET") != 0) op->code = "SSH_AUTH";
  return -1;
}

/* Each identity of the running ssh-agent in turn; counts them and the RSA
** ones. An agent that cannot be reached counts as a refusal (count -1). */
static int auth_agent(Op *op, int *count, int *rsa) {
  LIBSSH2_AGENT *agent = libssh2_agent_init(op->s->ssh);
  if (!agent) return op_errno(op, ENOMEM, "ssh-agent");
  int rc = 1;
  struct libssh2_agent_publickey *id = NULL;
  if (libssh2_agent_connect(agent) != 0 || libssh2_agent_list_identities(agent) != 0)
    *count = -1;
  while (*count >= 0 && rc == 1 && libssh2_agent_get_identity(agent, &id, id) == 0) {
    (*count)++;
    if (blob_is_rsa(id->blob, id->blob + id->blob_len)) (*rsa)++;
    while ((rc = libssh2_agent_userauth(agent, op->s->user, id)) == LIBSSH2_ERROR_EAGAIN &&
           !op_block(op, "ssh-agent authentication"))
      ;
    if (op->code) rc = -1;
    else if (rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED)
      rc = 1;
    else if (rc) rc = op_ssh(op, rc, "ssh-agent authentication");
  }
  libssh2_agent_disconnect(agent);
  libssh2_agent_free(agent);
  return rc;
}

/* Reads a private key file (small) into a malloc'd buffer. */
static char *read_key(Op *op, const char *path, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  char *buf = fd >= 0 ? malloc(65536) : NULL;
  ssize_t n = buf ? read(fd, buf, 65535) : -1;
  int err = errno;
  if (fd >= 0) close(fd);
  if (n < 0) {
    free(buf);
    op_errno(op, err, path);
    return NULL;
  }
  buf[n] = '\0';
  *len = (size_t)n;
  return buf;
}

/* Appends ", item" (or "item" first) to a list in buf. */
static void list_add(char *buf, size_t size, const char *item) {
  size_t n = strlen(buf);
  snprintf(buf + n, size - n, "%s%s", n ? ", " : "", item);
}

/* Tries the given methods the server accepts: agent, key, password (then
** keyboard-interactive with the same password). 0 when authenticated; the
** failure names what was tried, never a password or passphrase. */
static int authenticate(Op *op, const Auth *a) {
  Session *s = op->s;
  char *list, allowed[256] = "", tried[512] = "";
  const char *w;
  while (!(list = libssh2_userauth_list(s->ssh, s->user, (unsigned)strlen(s->user)))) {
    if (libssh2_userauth_authenticated(s->ssh)) return 0;  /* "none" was enough */
    int e = libssh2_session_last_errno(s->ssh);
    if (e != LIBSSH2_ERROR_EAGAIN) return op_ssh(op, e, "authentication");
    if ((w = op_wait(op))) return op_waitfail(op, w, "authentication");
  }
  snprintf(allowed, sizeof allowed, "%s", list);
  int rc = 1, rsa = 0;
  char item[300];
  if (strstr(allowed, "publickey") && a->agent) {
    int count = 0, nrsa = 0;
    rc = auth_agent(op, &count, &nrsa);
    if (count < 0) snprintf(item, sizeof item, "ssh-agent (not reachable: is SSH_AUTH_SOCK set?)");
    else snprintf(item, sizeof item, "ssh-agent (%d identities)", count);
    list_add(tried, sizeof tried, item);
    rsa = nrsa > 0;
  }
  if (rc == 1 && strstr(allowed, "publickey") && (a->key_path || a->key_data)) {
    size_t len = a->key_len;
    char *key = a->key_path ? read_key(op, a->key_path, &len) : (char *)a->key_data;
    if (!key) return -1;
    int encrypted;
    rsa |= key_info(key, len, a->passphrase, &encrypted);
    if (encrypted && !a->passphrase)
      rc = op_error(op, "SSH_AUTH", "the private key %s is encrypted: give its passphrase",
                    a->key_path ? a->key_path : "(key_data)");
    else
      rc = auth_try(op, BY_KEY, key, len, a->passphrase);
    if (a->key_path) free(key);
    snprintf(item, sizeof item, "publickey (%s)", a->key_path ? a->key_path : "key_data");
    list_add(tried, sizeof tried, item);
  }
  if (rc == 1 && a->password && strstr(allowed, "password")) {
    rc = auth_try(op, BY_PASSWORD, a->password, strlen(a->password), NULL);
    list_add(tried, sizeof tried, "password");
  }
  if (rc == 1 && a->password && strstr(allowed, "keyboard-interactive")) {
    rc = auth_try(op, BY_KBDINT, a->password, strlen(a->password), NULL);
    list_add(tried, sizeof tried, "keyboard-interactive");
  }
  if (rc <= 0) return rc;  /* in, or a key that cannot be loaded, a lost connection */
  if (!*tried) snprintf(tried, sizeof tried, "nothing the server accepts");
  return op_error(op, "SSH_AUTH", "authentication failed (tried %s; the server accepts %s)%s%s",
                  tried, allowed, rsa ? ": " : "", rsa ? RSA_EXPLANATION : "");
}

/* ====================================================================== */
/* ssh.connect and ssh.wait                                               */
/* ====================================================================== */

/* The connection steps, in pure C: TCP, handshake, host key, authentication. */
static int open_session(Op *op, const char *policy, const Auth *a) {
  Session *s = op->s;
  const char *w;
  int rc;
  s->sock = tcp_connect(op, s->host, s->port, op->deadline);
  if (s->sock < 0) return -1;
  s->ssh = libssh2_session_init_ex(NULL, NULL, NULL, s);
  if (!s->ssh) return op_errno(op, ENOMEM, "libssh2_session_init");
  libssh2_session_set_blocking(s->ssh, 0);
  while ((rc = libssh2_session_handshake(s->ssh, s->sock)) == LIBSSH2_ERROR_EAGAIN)
    if ((w = op_wait(op))) return op_waitfail(op, w, "SSH handshake");
  if (rc) return op_ssh(op, rc, "SSH handshake");
  s->ready = 1;
  if (check_host_key(op, policy) < 0) return -1;
  return authenticate(op, a);
}

/*
** ssh.connect{host=, port=22, user=, key= | key_data= | password= | agent=true,
**             passphrase=, timeout=30, host_key=} -> Session | nil, msg, code
** codes: ECONNREFUSED, ETIMEDOUT, ENOTFOUND, SSH_AUTH, SSH_HOSTKEY,
**        SSH_PROTOCOL, EINTR, errno codes for an unreadable key or known_hosts
*/
static int l_connect(lua_State *L) {
  static const char *const opts[] = {"host", "port", "user", "key", "key_data", "password",
                                     "agent", "passphrase", "timeout", "host_key", NULL};
  const char *fn = "ssh.connect";
  capil_check_options(L, 1, fn, opts);
  const char *host = capil_opt_string(L, 1, fn, "host", NULL, NULL);
  const char *user = capil_opt_string(L, 1, fn, "user", NULL, NULL);
  lua_Integer port = capil_opt_integer(L, 1, fn, "port", 22);
  double timeout = capil_opt_number(L, 1, fn, "timeout", 30);
  const char *policy = capil_opt_string(L, 1, fn, "host_key", NULL, NULL);
  Auth a = {0};
  a.key_path = capil_opt_string(L, 1, fn, "key", NULL, NULL);
  a.key_data = capil_opt_string(L, 1, fn, "key_data", NULL, &a.key_len);
  a.password = capil_opt_string(L, 1, fn, "password", NULL, NULL);
  a.passphrase = capil_opt_string(L, 1, fn, "passphrase", NULL, NULL);
  a.agent = capil_opt_boolean(L, 1, fn, "agent", 0);
  if (!host || !*host) return luaL_error(L, "%s: option 'host' is required", fn);
  if (!user || !*user) return luaL_error(L, "%s: option 'user' is required", fn);
  if (port < 1 || port > 65535) return luaL_error(L, "%s: port %d is out of range", fn, (int)port);
  if (strlen(host) >= 256 || strlen(user) >= 128)
    return luaL_error(L, "%s: host or user name too long", fn);
  if (!a.key_path && !a.key_data && !a.password && !a.agent)
    return luaL_error(L, "%s: give one of 'key', 'key_data', 'password' or 'agent'", fn);
  pthread_once(&init_once, init_library);
  if (init_rc != 0) return capil_fail(L, "SSH_PROTOCOL", "%s: libssh2_init failed", fn);

  /* the handle first, then the resources */
  Session *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->sock = -1;
  s->port = (int)port;
  snprintf(s->host, sizeof s->host, "%s", host);
  snprintf(s->user, sizeof s->user, "%s", user);
  snprintf(s->where, sizeof s->where, "%s@%s:%d", user, host, (int)port);
  luaL_setmetatable(L, SESSION_MT);
  Op op;
  op_init(&op, s, fn, timeout, 0);
  if (open_session(&op, policy, &a) < 0) {
    release(s);
    s->closed = 1;
    return capil_fail(L, op.code, "%s", op.msg);
  }
  return 1;
}

/* Reads a server's first line within the deadline: 1 when it is an SSH
** banner (copied to `banner`), 0 when not (or closed early), -1 on timeout/EINTR. */
static int read_banner(int fd, double deadline, char *banner, size_t size, const char **why) {
  size_t n = 0;
  while (n + 1 < size) {
    ssize_t r = recv(fd, banner + n, 1, 0);
    if (r == 1) {
      if (banner[n] == '\n') break;
      n++;
    } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
      return 0;
    } else if ((*why = poll_wait(fd, POLLIN, deadline))) {
      return -1;
    }
  }
  while (n > 0 && (banner[n - 1] == '\r' || banner[n - 1] == '\n')) n--;
  banner[n] = '\0';
  return strncmp(banner, "SSH-", 4) == 0;
}

/* Sleeps until `t`, in slices; -1 when interrupted. */
static int sleep_until(double t) {
  const char *w;
  while (!(w = poll_wait(-1, 0, t)))
    ;
  return strcmp(w, "EINTR") == 0 ? -1 : 0;
}

/*
** ssh.wait{host=, port=22, timeout=60, interval=1} -> true, banner | nil, msg, code
** Polls until a TCP connection gets an "SSH-..." banner (no login). Each try
** waits at most 10 s for the banner: a forwarding port (QEMU's hostfwd)
** accepts connections long before the guest's sshd answers.
*/
static int l_wait(lua_State *L) {
  static const char *const opts[] = {"host", "port", "timeout", "interval", NULL};
  const char *fn = "ssh.wait";
  capil_check_options(L, 1, fn, opts);
  const char *host = capil_opt_string(L, 1, fn, "host", NULL, NULL);
  lua_Integer port = capil_opt_integer(L, 1, fn, "port", 22);
  double timeout = capil_opt_number(L, 1, fn, "timeout", 60);
  double interval = capil_opt_number(L, 1, fn, "interval", 1);
  if (!host || !*host) return luaL_error(L, "%s: option 'host' is required", fn);
  if (port < 1 || port > 65535) return luaL_error(L, "%s: port %d is out of range", fn, (int)port);
  double deadline = capil_now() + timeout;
  char banner[256], last[600] = "no answer";
  const char *why = NULL;
  for (;;) {
    double until = capil_now() + 10;
    Op op;
    op_init(&op, NULL, fn, 0, 0);
    snprintf(op.target, sizeof op.target, "%s:%d", host, (int)port);
    int fd = tcp_connect(&op, host, (int)port, until < deadline ? until : deadline);
    if (fd >= 0) {
      int r = read_banner(fd, until < deadline ? until : deadline, banner, sizeof banner, &why);
      close(fd);
      if (r == 1) {
        lua_pushboolean(L, 1);
        lua_pushstring(L, banner);
        return 2;
      }
      snprintf(last, sizeof last, "%s", r == 0 ? "connected, but got no SSH banner" : "no banner yet");
    } else {
      why = op.code;
      snprintf(last, sizeof last, "%s", op.msg + op.head);
    }
    if ((why && strcmp(why, "EINTR") == 0) ||
        sleep_until(fmin(capil_now() + interval, deadline)) < 0)
      return capil_fail(L, "EINTR", "%s: %s:%d: interrupted", fn, host, (int)port);
    if (capil_now() >= deadline)
      return capil_fail(L, "ETIMEDOUT", "%s: %s:%d: no SSH banner within %g s (last try: %s)",
                        fn, host, (int)port, timeout, last);
  }
}

/* ====================================================================== */
/* exec                                                                   */
/* ====================================================================== */

/* Gives up on a channel whose command may still run (timeout, Ctrl-C, a failing
** callback): EOF and CLOSE are sent, and the channel is freed if the server
** confirms within half a second; otherwise the session keeps it until it is
** closed. The remote command is not killed (libssh2 1.10 cannot send signals). */
static void abandon(Session *s, LIBSSH2_CHANNEL *ch) {
  finish(s, step_channel_free, ch, 0.5);
}

/* The remote exit signal's name ("TERM") and 128 + its number, like a shell. */
static int signal_code(const char *name) {
  for (int i = 1; i < NSIG; i++) {
    const char *abbr = sigabbrev_np(i);
    if (abbr && strcmp(abbr, name) == 0) return 128 + i;
  }
  return 255;
}

/* Opens a channel and starts cmd on it, after the env table at stack index 4
** and the pty request. Returns the channel, or NULL with op set. */
static LIBSSH2_CHANNEL *exec_start(lua_State *L, Op *op, const char *cmd, size_t cmdlen, int pty) {
  Session *s = op->s;
  LIBSSH2_CHANNEL *ch;
  int rc = 0;
  while (!(ch = libssh2_channel_open_session(s->ssh))) {
    int e = libssh2_session_last_errno(s->ssh);
    if (e != LIBSSH2_ERROR_EAGAIN) { op_ssh(op, e, "cannot open a channel"); return NULL; }
    if (op_block(op, "cannot open a channel")) return NULL;
  }
  if (lua_istable(L, 4))
    for (lua_pushnil(L); lua_next(L, 4); lua_pop(L, 1)) {
      size_t kl, vl;
      const char *k = lua_tolstring(L, -2, &kl), *v = lua_tolstring(L, -1, &vl);
      while ((rc = libssh2_channel_setenv_ex(ch, k, (unsigned)kl, v, (unsigned)vl)) ==
             LIBSSH2_ERROR_EAGAIN && !op_block(op, "setenv"))
        ;
      if (rc == LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED)
        op_error(op, "SSH_ENV", "the server refused to set %s (sshd accepts only the "
                 "variables its AcceptEnv lists)", k);
      else if (rc < 0 && !op->code)
        op_ssh(op, rc, "setenv");
      if (op->code) { lua_pop(L, 2); break; }
    }
  while (!op->code && pty && (rc = libssh2_channel_request_pty_ex(ch, "xterm", 5, NULL, 0, 80, 24,
         0, 0)) == LIBSSH2_ERROR_EAGAIN && !op_block(op, "pty request"))
    ;
  if (!op->code && rc < 0) op_ssh(op, rc, "pty request");
  while (!op->code && (rc = libssh2_channel_process_startup(ch, "exec", 4, cmd, (unsigned)cmdlen)) ==
         LIBSSH2_ERROR_EAGAIN && !op_block(op, "exec request"))
    ;
  if (!op->code && rc < 0) op_ssh(op, rc, "exec request");
  if (op->code) {
    abandon(s, ch);
    return NULL;
  }
  return ch;
}

/* Feeds stdin and drains stdout and stderr (to on_output at 5, or to the
** tables at 6 and 7) until the remote side ends its output. 0, -1 with op
** set, -2 with on_output's error on the stack, -3 when on_output closed the
** session (the channel is gone with it). */
static int exec_pump(lua_State *L, Op *op, LIBSSH2_CHANNEL *ch, const char *input, size_t inlen) {
  char buf[32768];
  size_t off = 0;
  int eof_sent = 0;
  for (;;) {
    int busy = 0;
    if (op_expired(op, "waiting for the command")) return -1;
    if (input && off < inlen) {
      ssize_t n = libssh2_channel_write(ch, input + off, inlen - off);
      if (n > 0) off += (size_t)n, busy = 1;
      else if (n < 0 && n != LIBSSH2_ERROR_EAGAIN) {
        if (!libssh2_channel_eof(ch)) return op_ssh(op, (int)n, "writing stdin");
        off = inlen;  /* the command is gone and reads no more */
      }
    }
    if (!eof_sent && (!input || off >= inlen))
      eof_sent = libssh2_channel_send_eof(ch) != LIBSSH2_ERROR_EAGAIN;
    for (int stream = 0; stream < 2; stream++) {
      ssize_t n = libssh2_channel_read_ex(ch, stream, buf, sizeof buf);
      if (n < 0 && n != LIBSSH2_ERROR_EAGAIN) return op_ssh(op, (int)n, "reading output");
      if (n <= 0) continue;
      busy = 1;
      if (!lua_isnil(L, 5)) {
        lua_pushvalue(L, 5);
        lua_pushstring(L, stream ? "stderr" : "stdout");
        lua_pushlstring(L, buf, (size_t)n);
        if (lua_pcall(L, 2, 0, 0) != LUA_OK) return -2;
        if (op->s->closed) return -3;  /* the callback closed the session */
      } else {
        lua_pushlstring(L, buf, (size_t)n);
        lua_rawseti(L, 6 + stream, (lua_Integer)lua_rawlen(L, 6 + stream) + 1);
      }
    }
    if (!busy && libssh2_channel_eof(ch)) return 0;
    if (!busy && op_block(op, "waiting for the command")) return -1;
  }
}

/* Closes the channel once the output ended: the server's close comes after
** the exit status. 0, or -1 with op set. */
static int exec_close(Op *op, LIBSSH2_CHANNEL *ch) {
  int rc;
  while ((rc = libssh2_channel_close(ch)) == LIBSSH2_ERROR_EAGAIN)
    if (op_block(op, "waiting for the exit status")) return -1;
  return rc < 0 ? op_ssh(op, rc, "closing the channel") : 0;
}

static void push_joined(lua_State *L, int t) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_Integer n = (lua_Integer)lua_rawlen(L, t);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, t, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

/*
** session:exec(cmd, {stdin=, env=, timeout=, on_output=, pty=false})
**   -> {code=, signal=?, stdout=, stderr=} | nil, msg, code
** Output is collected unless on_output(stream, chunk) is given. timeout covers
** the whole command; on ETIMEDOUT the session stays usable, the remote
** command is left running. env is sent as "env" requests, which sshd refuses
** for names outside its AcceptEnv: that fails with "SSH_ENV".
*/
static int s_exec(lua_State *L) {
  Session *s = check_session(L, 1);
  size_t cmdlen, inlen = 0;
  const char *cmd = luaL_checklstring(L, 2, &cmdlen);
  static const char *const opts[] = {"stdin", "env", "timeout", "on_output", "pty", NULL};
  const char *fn = "ssh.exec";
  if (!lua_isnoneornil(L, 3)) capil_check_options(L, 3, fn, opts);
  const char *input = capil_opt_string(L, 3, fn, "stdin", NULL, &inlen);
  double timeout = capil_opt_number(L, 3, fn, "timeout", 0);
  int pty = capil_opt_boolean(L, 3, fn, "pty", 0);
  lua_settop(L, 3);
  int t = capil_opt_field(L, 3, "env");                          /* 4 */
  if (t != LUA_TNIL && t != LUA_TTABLE) luaL_error(L, "%s: option 'env' must be a table", fn);
  if (t == LUA_TTABLE)
    for (lua_pushnil(L); lua_next(L, 4); lua_pop(L, 1))
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
        luaL_error(L, "%s: env entries must be string = string", fn);
  t = capil_opt_field(L, 3, "on_output");                        /* 5 */
  if (t != LUA_TNIL && t != LUA_TFUNCTION) luaL_error(L, "%s: option 'on_output' must be a function", fn);
  lua_newtable(L);                                               /* 6: stdout chunks */
  lua_newtable(L);                                               /* 7: stderr chunks */
  Op op;
  op_init(&op, s, fn, timeout, 0);
  snprintf(op.target, sizeof op.target, "%s: `%.*s`", s->where, cmdlen > 80 ? 80 : (int)cmdlen, cmd);

  LIBSSH2_CHANNEL *ch = exec_start(L, &op, cmd, cmdlen, pty);
  if (!ch) return capil_fail(L, op.code, "%s", op.msg);
  int rc = exec_pump(L, &op, ch, input, inlen);
  if (s->closed) return rc == -2 ? lua_error(L) : luaL_error(L, "%s: on_output closed the session", fn);
  if (rc == 0) rc = exec_close(&op, ch);
  if (rc != 0) {
    abandon(s, ch);
    return rc == -2 ? lua_error(L) : capil_fail(L, op.code, "%s", op.msg);
  }
  int code = libssh2_channel_get_exit_status(ch);
  char *sig = NULL, signame[32] = "";
  size_t siglen = 0;
  libssh2_channel_get_exit_signal(ch, &sig, &siglen, NULL, NULL, NULL, NULL);
  if (sig) {
    snprintf(signame, sizeof signame, "%.*s", (int)siglen, sig);
    libssh2_free(s->ssh, sig);
    code = signal_code(signame);
  }
  finish(s, step_channel_free, ch, GRACE);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "code");
  if (*signame) {
    lua_pushstring(L, signame);
    lua_setfield(L, -2, "signal");
  }
  push_joined(L, 6);
  lua_setfield(L, -2, "stdout");
  push_joined(L, 7);
  lua_setfield(L, -2, "stderr");
  return 1;
}

/* ====================================================================== */
/* SFTP: put and get                                                      */
/* ====================================================================== */

static int sftp_start(Op *op) {
  Session *s = op->s;
  while (!s->sftp && !(s->sftp = libssh2_sftp_init(s->ssh))) {
    int e = libssh2_session_last_errno(s->ssh);
    if (e != LIBSSH2_ERROR_EAGAIN) return op_ssh(op, e, "cannot start SFTP");
    if (op_block(op, "cannot start SFTP")) return -1;
  }
  return 0;
}

static LIBSSH2_SFTP_HANDLE *sftp_open(Op *op, const char *path, unsigned long flags, long mode) {
  LIBSSH2_SFTP_HANDLE *h;
  const char *what = "cannot open the remote file";
  while (!(h = libssh2_sftp_open_ex(op->s->sftp, path, (unsigned)strlen(path), flags, mode,
                                    LIBSSH2_SFTP_OPENFILE))) {
    int e = libssh2_session_last_errno(op->s->ssh);
    if (e != LIBSSH2_ERROR_EAGAIN) { op_ssh(op, e, what); return NULL; }
    if (op_block(op, what)) return NULL;
  }
  return h;
}

/* Closes a remote file; close_handle frees the handle whatever it returns,
** and reports late write errors (a full disk). 0 or -1 (op set). */
static int sftp_close(Op *op, LIBSSH2_SFTP_HANDLE *h) {
  int rc;
  while ((rc = libssh2_sftp_close_handle(h)) == LIBSSH2_ERROR_EAGAIN)
    if (op_block(op, "closing the remote file")) return -1;
  return rc < 0 ? op_ssh(op, rc, "closing the remote file") : 0;
}

/* Renames over an existing file: SFTPv3 (OpenSSH) cannot, and answers a bare
** FX_FAILURE; then the target is removed first, which leaves a short window
** without it. Other refusals (permissions) leave the target alone. */
static int sftp_replace(Op *op, const char *from, const char *to) {
  LIBSSH2_SFTP *sftp = op->s->sftp;
  unsigned fl = (unsigned)strlen(from), tl = (unsigned)strlen(to);
  long flags = LIBSSH2_SFTP_RENAME_OVERWRITE | LIBSSH2_SFTP_RENAME_ATOMIC | LIBSSH2_SFTP_RENAME_NATIVE;
  int rc;
  while ((rc = libssh2_sftp_rename_ex(sftp, from, fl, to, tl, flags)) == LIBSSH2_ERROR_EAGAIN)
    if (op_block(op, "renaming")) return -1;
  unsigned long st = rc == LIBSSH2_ERROR_SFTP_PROTOCOL ? libssh2_sftp_last_error(sftp) : 0;
  if (st == LIBSSH2_FX_FAILURE || st == LIBSSH2_FX_FILE_ALREADY_EXISTS) {
    while ((rc = libssh2_sftp_unlink_ex(sftp, to, tl)) == LIBSSH2_ERROR_EAGAIN)
      if (op_block(op, "replacing")) return -1;
    while ((rc = libssh2_sftp_rename_ex(sftp, from, fl, to, tl, flags)) == LIBSSH2_ERROR_EAGAIN)
      if (op_block(op, "renaming")) return -1;
  }
  return rc < 0 ? op_ssh(op, rc, "renaming") : 0;
}

/* Best effort after a failed upload: no half-written temp file left behind. */
static void sftp_discard(Session *s, const char *path) {
  double end = capil_now() + GRACE;
  while (libssh2_sftp_unlink_ex(s->sftp, path, (unsigned)strlen(path)) == LIBSSH2_ERROR_EAGAIN &&
         !poll_wait(s->sock, POLLIN, end))
    ;
}

/* Options of put and get: timeout (seconds without progress), progress, mode
** (put). Leaves the progress handle at 5 and a transfer buffer at 6. */
static char *transfer_opts(lua_State *L, const char *fn, double *timeout,
                           struct capil_progress **progress, lua_Integer *mode) {
  static const char *const put_opts[] = {"mode", "progress", "timeout", NULL};
  static const char *const get_opts[] = {"progress", "timeout", NULL};
  if (!lua_isnoneornil(L, 4)) capil_check_options(L, 4, fn, mode ? put_opts : get_opts);
  *timeout = capil_opt_number(L, 4, fn, "timeout", 0);
  if (mode) *mode = capil_opt_integer(L, 4, fn, "mode", 0644);
  lua_settop(L, 4);
  capil_opt_field(L, 4, "progress");                             /* 5 */
  *progress = capil_progress_opt(L, 5);
  return lua_newuserdatauv(L, CHUNK, 0);                         /* 6 */
}

static int push_transfer(lua_State *L, uint64_t size, EVP_MD_CTX *md) {
  char hex[65];
  sha256_hex(md, hex);
  EVP_MD_CTX_free(md);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)size);
  lua_setfield(L, -2, "size");
  lua_pushstring(L, hex);
  lua_setfield(L, -2, "sha256");
  return 1;
}

/*
** session:put(local, remote, {mode=0644, progress=, timeout=}) -> {size=, sha256=}
** Written to "<remote>.capil-<pid>-<n>" then renamed over `remote`.
*/
static int s_put(lua_State *L) {
  Session *s = check_session(L, 1);
  const char *lpath = luaL_checkstring(L, 2), *rpath = luaL_checkstring(L, 3);
  double timeout;
  struct capil_progress *progress;
  lua_Integer mode;
  char *buf = transfer_opts(L, "ssh.put", &timeout, &progress, &mode);
  static unsigned counter = 0;
  const char *tmp = lua_pushfstring(L, "%s.capil-%d-%d", rpath, (int)getpid(), (int)++counter);
  Op op;
  op_init(&op, s, "ssh.put", timeout, 1);
  snprintf(op.target, sizeof op.target, "%s -> %s:%s", lpath, s->where, rpath);
  LIBSSH2_SFTP_HANDLE *h = NULL;
  EVP_MD_CTX *md = NULL;
  uint64_t done = 0;
  int created = 0;
  struct stat st;
  int fd = open(lpath, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) != 0) { op_errno(&op, errno, "cannot read the local file"); goto failed; }
  capil_progress_total(progress, (uint64_t)st.st_size);
  if (sftp_start(&op) < 0) goto failed;
  h = sftp_open(&op, tmp, LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC, (long)mode);
  if (!h) goto failed;
  created = 1;
  md = EVP_MD_CTX_new();
  if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) { op_errno(&op, ENOMEM, "sha256"); goto failed; }
  for (;;) {
    if (op_expired(&op, "writing")) goto failed;
    ssize_t n = read(fd, buf, CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { op_errno(&op, errno, "reading the local file"); goto failed; }
    if (n == 0) break;
    EVP_DigestUpdate(md, buf, (size_t)n);
    /* libssh2 pipelines the write: each call sends what it can, returns
    ** what the server has acknowledged, and takes the rest next time */
    for (ssize_t sent = 0; sent < n;) {
      ssize_t w = libssh2_sftp_write(h, buf + sent, (size_t)(n - sent));
      if (w == LIBSSH2_ERROR_EAGAIN) {
        if (op_block(&op, "writing")) goto failed;
        continue;
      }
      if (w < 0) { op_ssh(&op, (int)w, "writing"); goto failed; }
      sent += w;
      done += (uint64_t)w;
      op_progress(&op);
      capil_progress_update(progress, done);
    }
  }
  LIBSSH2_SFTP_ATTRIBUTES attrs = {.flags = LIBSSH2_SFTP_ATTR_PERMISSIONS,
                                   .permissions = (unsigned long)mode};
  int rc;
  while ((rc = libssh2_sftp_fsetstat(h, &attrs)) == LIBSSH2_ERROR_EAGAIN)
    if (op_block(&op, "setting the mode")) goto failed;
  if (rc < 0) { op_ssh(&op, rc, "setting the mode"); goto failed; }
  rc = sftp_close(&op, h);
  h = NULL;
  if (rc < 0 || sftp_replace(&op, tmp, rpath) < 0) goto failed;
  close(fd);
  return push_transfer(L, done, md);
failed:
  if (fd >= 0) close(fd);
  EVP_MD_CTX_free(md);
  if (h) finish(s, step_handle_close, h, GRACE);
  if (created) sftp_discard(s, tmp);
  return capil_fail(L, op.code, "%s", op.msg);
}

/*
** session:get(remote, local, {progress=, timeout=}) -> {size=, sha256=}
** Streams into ".<name>.capil-XXXXXX" beside `local`, renamed when complete.
*/
static int s_get(lua_State *L) {
  Session *s = check_session(L, 1);
  const char *rpath = luaL_checkstring(L, 2), *lpath = luaL_checkstring(L, 3);
  double timeout;
  struct capil_progress *progress;
  char *buf = transfer_opts(L, "ssh.get", &timeout, &progress, NULL);
  const char *slash = strrchr(lpath, '/');
  int dirlen = slash ? (int)(slash - lpath + 1) : 0;
  size_t tmpsize = strlen(lpath) + 32;
  char *tmp = lua_newuserdatauv(L, tmpsize, 0);  /* mkostemp writes into it */
  snprintf(tmp, tmpsize, "%.*s.%s.capil-XXXXXX", dirlen, lpath, lpath + dirlen);
  Op op;
  op_init(&op, s, "ssh.get", timeout, 1);
  snprintf(op.target, sizeof op.target, "%s:%s -> %s", s->where, rpath, lpath);
  LIBSSH2_SFTP_HANDLE *h = NULL;
  EVP_MD_CTX *md = NULL;
  uint64_t done = 0;
  int fd = mkostemp(tmp, O_CLOEXEC), created = fd >= 0;
  if (fd < 0) { op_errno(&op, errno, "cannot create a file beside the destination"); goto failed; }
  if (sftp_start(&op) < 0 || !(h = sftp_open(&op, rpath, LIBSSH2_FXF_READ, 0))) goto failed;
  LIBSSH2_SFTP_ATTRIBUTES attrs;
  int rc;
  while ((rc = libssh2_sftp_fstat_ex(h, &attrs, 0)) == LIBSSH2_ERROR_EAGAIN)
    if (op_block(&op, "stat")) goto failed;
  if (rc == 0 && (attrs.flags & LIBSSH2_SFTP_ATTR_SIZE)) capil_progress_total(progress, attrs.filesize);
  md = EVP_MD_CTX_new();
  if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) { op_errno(&op, ENOMEM, "sha256"); goto failed; }
  for (;;) {
    if (op_expired(&op, "reading")) goto failed;
    ssize_t n = libssh2_sftp_read(h, buf, CHUNK);  /* reads ahead up to CHUNK */
    if (n == LIBSSH2_ERROR_EAGAIN) {
      if (op_block(&op, "reading")) goto failed;
      continue;
    }
    if (n < 0) { op_ssh(&op, (int)n, "reading"); goto failed; }
    if (n == 0) break;
    EVP_DigestUpdate(md, buf, (size_t)n);
    for (ssize_t put = 0; put < n;) {
      ssize_t r = write(fd, buf + put, (size_t)(n - put));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) { op_errno(&op, errno, "writing the local file"); goto failed; }
      put += r;
    }
    done += (uint64_t)n;
    op_progress(&op);
    capil_progress_update(progress, done);
  }
  rc = sftp_close(&op, h);
  h = NULL;
  if (rc < 0) goto failed;
  mode_t mask = umask(0);
  umask(mask);
  fchmod(fd, 0666 & ~mask);
  rc = close(fd);
  fd = -1;
  if (rc != 0 || rename(tmp, lpath) != 0) { op_errno(&op, errno, "cannot write the destination"); goto failed; }
  return push_transfer(L, done, md);
failed:
  if (fd >= 0) close(fd);
  if (created) unlink(tmp);
  EVP_MD_CTX_free(md);
  if (h) finish(s, step_handle_close, h, GRACE);
  return capil_fail(L, op.code, "%s", op.msg);
}


/* ====================================================================== */
/* SFTP: a download streamed into a pipe                                  */
/* ====================================================================== */

/*
** session:stream(remote, {timeout=}) -> stream | nil, msg, code
** Opens `remote` and streams its bytes into a pipe on a thread of its own,
** so that a consumer on the calling thread (capil.core.vmdkw reading the
** pipe's end) works while the download goes on: one pass from the server
** into whatever reads it, no file between. stream:fd() is the pipe's read
** end, stream.size the file's size when opened, stream.remote its name.
** stream:close() -> {size=} | nil, msg, code closes the read end (a
** thread blocked writing gets EPIPE), joins the thread and reports how the
** download went: exactly `size` bytes read to EOF, or the failure (a
** dropped connection, Ctrl-C, no progress for `timeout` seconds, a file
** that grew or shrank meanwhile). Until it is closed the session belongs to
** the thread: its other methods raise.
*/
typedef struct Stream {
  Session *s;
  LIBSSH2_SFTP_HANDLE *h;
  int rfd, wfd;
  uint64_t size, done;
  Op op;                      /* the thread's: failed when op.code is set */
  pthread_t tid;
  int running;                /* the thread was started and not joined */
  int stop;                   /* set (atomically) by stream_stop: the thread quits */
  int closed;
  char remote[512];
} Stream;

static void *stream_pump(void *arg) {
  Stream *st = arg;
  Op *op = &st->op;
  char *buf = malloc(CHUNK);
  if (!buf) { op_errno(op, ENOMEM, "reading"); goto out; }
  for (;;) {
    /* stream_stop: the reader is gone; a stalled server must not hold the join */
    if (__atomic_load_n(&st->stop, __ATOMIC_ACQUIRE)) {
      /* every byte delivered, only the server's EOF outstanding: done */
      if (st->done == st->size) goto out;
      op_error(op, "EPIPE", "the reader stopped after %llu of %llu bytes", (unsigned long long)st->done,
               (unsigned long long)st->size);
      goto out;
    }
    if (op_expired(op, "reading")) goto out;
    ssize_t n = libssh2_sftp_read(st->h, buf, CHUNK);
    if (n == LIBSSH2_ERROR_EAGAIN) {
      if (op_block(op, "reading")) goto out;   /* waits 100 ms at most */
      continue;
    }
    if (n < 0) { op_ssh(op, (int)n, "reading"); goto out; }
    if (n == 0) break;
    if (st->done + (uint64_t)n > st->size) {
      op_error(op, "CHANGED", "the file grew beyond its %llu bytes while it was read",
               (unsigned long long)st->size);
      goto out;
    }
    for (ssize_t put = 0; put < n;) {
      ssize_t w = write(st->wfd, buf + put, (size_t)(n - put));
      if (w < 0 && errno == EINTR && !capil_interrupted()) continue;
      if (w < 0 && errno == EPIPE) {
        op_error(op, "EPIPE", "the reader stopped after %llu of %llu bytes", (unsigned long long)st->done,
                 (unsigned long long)st->size);
        goto out;
      }
      if (w < 0) { op_errno(op, errno, "writing the pipe"); goto out; }
      put += w;
    }
    st->done += (uint64_t)n;
    op_progress(op);
  }
  if (st->done != st->size)
    op_error(op, "CHANGED", "the file shrank to %llu of its %llu bytes while it was read",
             (unsigned long long)st->done, (unsigned long long)st->size);
out:
  free(buf);
  close(st->wfd);             /* the reader sees EOF */
  st->wfd = -1;
  return NULL;
}

/* Stops the transfer: closes the read end, joins the thread, closes the
** remote file; the session is free again. Idempotent. */
static void stream_stop(Stream *st) {
  if (st->closed) return;
  st->closed = 1;
  __atomic_store_n(&st->stop, 1, __ATOMIC_RELEASE);
  if (st->rfd >= 0) close(st->rfd);
  st->rfd = -1;
  if (st->running) pthread_join(st->tid, NULL);
  st->running = 0;
  if (st->wfd >= 0) close(st->wfd);
  st->wfd = -1;
  if (st->h && st->s->ssh) finish(st->s, step_handle_close, st->h, GRACE);
  st->h = NULL;
  st->s->stream = NULL;
}

static int s_stream(lua_State *L) {
  Session *s = check_session(L, 1);
  const char *rpath = luaL_checkstring(L, 2);
  static const char *const opts[] = {"timeout", NULL};
  if (!lua_isnoneornil(L, 3)) capil_check_options(L, 3, "ssh.stream", opts);
  double timeout = capil_opt_number(L, 3, "ssh.stream", "timeout", 0);
  Stream *st = lua_newuserdatauv(L, sizeof *st, 1);
  memset(st, 0, sizeof *st);
  st->rfd = st->wfd = -1;
  st->closed = 1;             /* nothing to stop until it runs */
  st->s = s;
  luaL_setmetatable(L, STREAM_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);  /* the session outlives its stream */
  snprintf(st->remote, sizeof st->remote, "%s", rpath);
  Op op;
  op_init(&op, s, "ssh.stream", timeout, 1);
  snprintf(op.target, sizeof op.target, "%s:%s", s->where, rpath);
  if (sftp_start(&op) < 0 || !(st->h = sftp_open(&op, rpath, LIBSSH2_FXF_READ, 0))) goto failed;
  LIBSSH2_SFTP_ATTRIBUTES attrs;
  int rc;
  while ((rc = libssh2_sftp_fstat_ex(st->h, &attrs, 0)) == LIBSSH2_ERROR_EAGAIN)
    if (op_block(&op, "stat")) goto failed;
  if (rc < 0) { op_ssh(&op, rc, "stat"); goto failed; }
  if (!(attrs.flags & LIBSSH2_SFTP_ATTR_SIZE)) {
    op_error(&op, "SSH_SFTP", "the server did not say the file's size");
    goto failed;
  }
  st->size = attrs.filesize;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) { op_errno(&op, errno, "pipe"); goto failed; }
  st->rfd = fds[0];
  st->wfd = fds[1];
  fcntl(st->wfd, F_SETPIPE_SZ, 1 << 20);   /* fewer wake-ups; a hint */
  st->op = op;
  st->closed = 0;
  s->stream = st;
  if ((rc = pthread_create(&st->tid, NULL, stream_pump, st)) != 0) {
    op_errno(&op, rc, "cannot start the download thread");
    stream_stop(st);
    return capil_fail(L, op.code, "%s", op.msg);
  }
  st->running = 1;
  return 1;
failed:
  if (st->h) finish(s, step_handle_close, st->h, GRACE);
  st->h = NULL;
  return capil_fail(L, op.code, "%s", op.msg);
}

static Stream *check_stream(lua_State *L) {
  return luaL_checkudata(L, 1, STREAM_MT);
}

static int st_fd(lua_State *L) {
  Stream *st = check_stream(L);
  if (st->closed || st->rfd < 0) return luaL_error(L, "ssh.stream: attempt to use a closed stream");
  lua_pushinteger(L, st->rfd);
  return 1;
}

/* stream:close() -> {size=} | nil, msg, code (the thread's failure) */
static int st_close(lua_State *L) {
  Stream *st = check_stream(L);
  int was_open = !st->closed;
  stream_stop(st);
  if (!was_open) return luaL_error(L, "ssh.stream: the stream is already closed");
  if (st->op.code) return capil_fail(L, st->op.code, "%s", st->op.msg);
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, (lua_Integer)st->done);
  lua_setfield(L, -2, "size");
  return 1;
}

static int st_gc(lua_State *L) {
  stream_stop(check_stream(L));
  return 0;
}

static int st_index(lua_State *L) {
  Stream *st = check_stream(L);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "size") == 0) lua_pushinteger(L, (lua_Integer)st->size);
  else if (strcmp(k, "remote") == 0) lua_pushstring(L, st->remote);
  else if (strcmp(k, "fd") == 0) lua_pushcfunction(L, st_fd);
  else if (strcmp(k, "close") == 0) lua_pushcfunction(L, st_close);
  else lua_pushnil(L);
  return 1;
}

/* ====================================================================== */
/* Session methods and metatable                                          */
/* ====================================================================== */

/* The idempotent close (__gc, __close, :close()). */
static int s_close(lua_State *L) {
  Session *s = luaL_checkudata(L, 1, SESSION_MT);
  if (s->closed) return 0;
  if (s->stream) stream_stop(s->stream);
  s->closed = 1;
  release(s);
  return 0;
}

static int s_index(lua_State *L) {
  Session *s = luaL_checkudata(L, 1, SESSION_MT);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "host_key_fingerprint") == 0) lua_pushstring(L, s->fingerprint);
  else if (strcmp(k, "host") == 0) lua_pushstring(L, s->host);
  else if (strcmp(k, "port") == 0) lua_pushinteger(L, s->port);
  else if (strcmp(k, "user") == 0) lua_pushstring(L, s->user);
  else if (strcmp(k, "closed") == 0) lua_pushboolean(L, s->closed);
  else if (strcmp(k, "banner") == 0 && s->ssh) lua_pushstring(L, libssh2_session_banner_get(s->ssh));
  else {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, k);
  }
  return 1;
}

static int s_tostring(lua_State *L) {
  Session *s = luaL_checkudata(L, 1, SESSION_MT);
  lua_pushfstring(L, "ssh session %s%s", s->where, s->closed ? " (closed)" : "");
  return 1;
}

static const luaL_Reg funcs[] = {
  {"connect", l_connect},
  {"wait", l_wait},
  {NULL, NULL}
};

static const luaL_Reg methods[] = {
  {"exec", s_exec},
  {"put", s_put},
  {"get", s_get},
  {"stream", s_stream},
  {"close", s_close},
  {NULL, NULL}
};

static const luaL_Reg meta[] = {
  {"__index", s_index},
  {"__gc", s_close},
  {"__close", s_close},
  {"__tostring", s_tostring},
  {NULL, NULL}
};

static void create_meta(lua_State *L) {
  luaL_newmetatable(L, SESSION_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  luaL_newmetatable(L, STREAM_MT);
  lua_pushcfunction(L, st_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, st_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, st_gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
}

int luaopen_capil_core_ssh(lua_State *L) {
  create_meta(L);
  luaL_newlib(L, funcs);
  return 1;
}
