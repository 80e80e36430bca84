/* log.h — structured one-line JSON logs on stderr, with levels.
 *
 * DESIGN: each line is {"ts":..., "level":..., "msg":..., <fields>} written
 * with one write(2) call, so lines from several threads never interleave.
 * The level threshold is set once at start-up, before threads exist.
 */
#ifndef SRV_LOG_H
#define SRV_LOG_H

typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Parses "debug", "info", "warn" or "error"; returns -1 otherwise. */
int log_parse_level(const char *s);
void log_set_level(log_level l);
int log_enabled(log_level l);

/* Logs msg at level l; fields_fmt (may be NULL) formats extra JSON members
 * without the leading comma, e.g. "\"port\":%d". The caller escapes string
 * values with log_esc. */
void log_msg(log_level l, const char *msg, const char *fields_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Escapes s for use inside a JSON string into buf (size bytes, always
 * terminated; a longer s is cut between characters); a byte that starts no
 * valid UTF-8 character is written as \ufffd. Returns buf. */
const char *log_esc(const char *s, char *buf, unsigned long size);

#endif
