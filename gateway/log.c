/* log.c: structured log lines (text or JSON, one write() each) and the clocks.
 * Every module logs and reads the clock, so this module depends on no other:
 * its settings are handed over by log_setup. */
#include <stdio.h>
#include <string.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>
#include "gateway.h"

static int log_fd = 2;
static int log_json, log_min = LOG_INFO;
static const char *log_node = "", *log_file;

/* Takes the log settings (main after config_load, a worker after naming its
 * node); the strings must outlive the process's logging. */
void
log_setup(int json, int min, const char *node, const char *file)
{
	log_json = json;
	log_min = min;
	log_node = node ? node : "";
	log_file = file;
}

/* Monotonic clock in microseconds. */
uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}


/* Milliseconds on a wrapping 32-bit clock; compare with differences only. */
uint32_t
now_ms(void)
{
	return (uint32_t)(now_us() / 1000);
}


/* Appends s to buf as a JSON string body (no quotes); returns the new length. */
static size_t
json_escape(char *buf, size_t pos, size_t cap, const char *s)
{
	for (; *s && pos + 7 < cap; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\') {
			buf[pos++] = '\\';
			buf[pos++] = (char)ch;
		} else if (ch < 0x20) {
			pos += (size_t)snprintf(buf + pos, cap - pos, "\\u%04x", ch);
		} else {
			buf[pos++] = (char)ch;
		}
	}
	return pos;
}

/* Formats one log line (text or JSON) and writes it with a single write(). */
void
log_msg(int level, uint32_t conn, const char *fmt, ...)
{
	static const char *names[] = { "debug", "info", "warn", "error" };
	char msg[1024], line[2560], ts[40];
	struct timespec now;
	struct tm tm;
	size_t n;
	va_list ap;

	if (level < log_min)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000);

	if (log_json) {
		n = (size_t)snprintf(line, sizeof(line),
				     "{\"ts\":\"%s\",\"level\":\"%s\",\"node\":\"%s\",\"pid\":%d,",
				     ts, names[level], log_node, (int)getpid());
		if (conn)
			n += (size_t)snprintf(line + n, sizeof(line) - n, "\"conn\":%u,", conn);
		n += (size_t)snprintf(line + n, sizeof(line) - n, "\"msg\":\"");
		n = json_escape(line, n, sizeof(line) - 3, msg);
		line[n++] = '"';
		line[n++] = '}';
	} else {
		n = (size_t)snprintf(line, sizeof(line), "%s %-5s node=%s pid=%d ", ts, names[level],
				     log_node, (int)getpid());
		if (conn)
			n += (size_t)snprintf(line + n, sizeof(line) - n, "conn=%u ", conn);
		n += (size_t)snprintf(line + n, sizeof(line) - n, "%s", msg);
		if (n > sizeof(line) - 2)
			n = sizeof(line) - 2;
	}
	line[n++] = '\n';
	/* One write per line: several workers may append to the same file. */
	if (write(log_fd, line, n) < 0) {
		/* nowhere left to report it */
	}
}

/* Opens (or reopens, on SIGHUP) --log-file; stderr stays on failure. */
void
log_reopen(void)
{
	int fd;

	if (!log_file)
		return;
	fd = open(log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		log_msg(LOG_ERROR, 0, "cannot open log file %s: %s", log_file, strerror(errno));
		return;
	}
	if (log_fd != 2)
		close(log_fd);
	log_fd = fd;
}

/* lws's own warnings and errors go through our log. */
void
log_lws(int level, const char *line)
{
	log_msg(level == LLL_ERR ? LOG_ERROR : LOG_WARN, 0, "lws: %s", line);
}

