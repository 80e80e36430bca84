/* probe.c — dcnserve-probe: a health probe for images without curl.
 *
 *     dcnserve-probe [PATH [PORT]]
 *
 * Sends "GET PATH" (default /v2/health/ready) to the local server and exits
 * 0 when the answer's status is 2xx, 1 on any other status, on a refused or
 * timed-out connection or a malformed answer, 2 on bad arguments. That is
 * the exit contract of a Dockerfile HEALTHCHECK and of a Kubernetes exec
 * probe. PORT defaults to $DCNSERVE_PORT, then 8080, so the probe follows
 * the port the server was given through its environment; the address is
 * $DCNSERVE_HOST unless that is unset or 0.0.0.0, then 127.0.0.1.
 *
 * DESIGN: one blocking IPv4 connection with a 2 s send/receive timeout
 * (Linux applies SO_SNDTIMEO to connect), reads only the status line, no
 * allocation. The environment is treated as hostile: the port must be all
 * digits and at most 65535, the path must start with '/' and hold no
 * control characters or spaces.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define PROBE_TIMEOUT_S 2
#define PROBE_PATH_MAX 256

/* Parses a TCP port (1..65535, digits only); returns it or -1. */
static long parse_port(const char *s)
{
    long v = 0;
    if (!s || !*s || strlen(s) > 5) return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    return v >= 1 && v <= 65535 ? v : -1;
}

/* 1 when path is a plain request target ("/..." without spaces or controls). */
static int path_ok(const char *p)
{
    if (p[0] != '/' || strlen(p) > PROBE_PATH_MAX) return 0;
    for (; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) return 0;
    return 1;
}

/* Writes all of buf; returns 0 or -1. */
static int write_all(int fd, const char *buf, size_t n)
{
    while (n) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/v2/health/ready";
    const char *port_s = argc > 2 ? argv[2] : getenv("DCNSERVE_PORT");
    const char *host = getenv("DCNSERVE_HOST");
    if (argc > 3 || !path_ok(path)) {
        fprintf(stderr, "usage: dcnserve-probe [PATH [PORT]]\n");
        return 2;
    }
    long port = port_s ? parse_port(port_s) : 8080;
    if (port < 0) {
        fprintf(stderr, "dcnserve-probe: bad port\n");
        return 2;
    }
    if (!host || !*host || !strcmp(host, "0.0.0.0")) host = "127.0.0.1";

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "dcnserve-probe: bad DCNSERVE_HOST\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("dcnserve-probe: socket");
        return 1;
    }
    struct timeval tv = {.tv_sec = PROBE_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    char req[PROBE_PATH_MAX + 128], resp[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%ld\r\nConnection: close\r\n\r\n", path,
                     host, port);
    int rc = 1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "dcnserve-probe: connect %s:%ld: %s\n", host, port, strerror(errno));
        goto done;
    }
    if (write_all(fd, req, (size_t)n) < 0) {
        fprintf(stderr, "dcnserve-probe: send: %s\n", strerror(errno));
        goto done;
    }
    /* The status line fits in the first read in practice; loop until it is whole. */
    size_t got = 0;
    while (got < sizeof resp - 1 && !memchr(resp, '\n', got)) {
        ssize_t r = recv(fd, resp + got, sizeof resp - 1 - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    resp[got] = 0;
    int major, minor, status;
    if (sscanf(resp, "HTTP/%d.%d %3d", &major, &minor, &status) != 3) {
        fprintf(stderr, "dcnserve-probe: no HTTP status line from %s:%ld\n", host, port);
        goto done;
    }
    printf("%s -> %d\n", path, status);
    rc = status >= 200 && status < 300 ? 0 : 1;
done:
    close(fd);
    return rc;
}
