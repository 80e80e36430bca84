/* log.c — JSON line logger (see log.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/rk.h"
#include "server/log.h"

static log_level threshold = LOG_INFO;
static const char *const names[] = {"debug", "info", "warn", "error"};

int log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

void log_set_level(log_level l) { threshold = l; }
int log_enabled(log_level l) { return l >= threshold; }

const char *log_esc(const char *s, char *buf, unsigned long size)
{
    size_t o = 0;
    if (!size) return buf;
    /* room for the longest piece (6 bytes) and the NUL at each step */
    while (s && *s && o + 7 < size) {
        unsigned char c = (unsigned char)*s;
        size_t k = c < 0x80 ? 1 : rk_utf8_char(s, strnlen(s, 4));
        if (c == '"' || c == '\\') { buf[o++] = '\\'; buf[o++] = (char)c; }
        else if (c < 0x20) o += (size_t)snprintf(buf + o, size - o, "\\u%04x", c);
        else if (!k) { memcpy(buf + o, "\\ufffd", 6); o += 6; k = 1; } /* not UTF-8 (environment, file names) */
        else { memcpy(buf + o, s, k); o += k; }
        s += k;
    }
    buf[o] = 0;
    return buf;
}

void log_msg(log_level l, const char *msg, const char *fields_fmt, ...)
{
    if (l < threshold) return;
    char line[4096], esc[512]; /* the configuration line is the longest: about 1 to 2.5 KiB */
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"msg\":\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[l], log_esc(msg, esc, sizeof esc));
    if (n < 0 || (size_t)n >= sizeof line - 4) n = (int)sizeof line - 4;
    if (fields_fmt && *fields_fmt) {
        line[n++] = ',';
        va_list ap;
        va_start(ap, fields_fmt);
        int k = vsnprintf(line + n, sizeof line - (size_t)n - 2, fields_fmt, ap);
        va_end(ap);
        if (k > 0) n += k < (int)(sizeof line - (size_t)n - 2) ? k : (int)(sizeof line - (size_t)n - 3);
    }
    line[n++] = '}';
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}
