/*
 * notify_probe.c: the draining listener of bench/notify-throughput.sh, and
 * a latency probe.
 *
 *   notify_probe DBNAME NODE SECONDS [PROBE_CONVERSATION PROBE_SENDER]
 *
 * LISTENs on chat_node_NODE and drains it for SECONDS, counting
 * notifications and events.  With a probe conversation it also sends one
 * message every 10 ms from a second connection (chat.send_message with
 * client_msg_id "p<pid>-N") and measures, per probe message, the time from
 * its COMMIT returning to the sender to its event reaching the listener.
 * Prints one line of key=value pairs.  Connection settings from PG* env.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define MAX_PROBES 100000

static double commit_at[MAX_PROBES];	/* ms, 0 = not yet */
static double start_at[MAX_PROBES];
static double recv_at[MAX_PROBES];
static int	probes_sent;
static volatile int stop;
static const char *dbname;
static char tag[32];			/* "\"p<pid>-": client_msg_id prefix of this run */
static int	taglen;
static long long probe_conv,
			probe_sender;

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Sends probe messages until stop. */
static void *
probe_thread(void *arg __attribute__((unused)))
{
	char		conninfo[256];
	PGconn	   *conn;

	snprintf(conninfo, sizeof(conninfo), "dbname=%s", dbname);
	conn = PQconnectdb(conninfo);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "probe: %s", PQerrorMessage(conn));
		exit(2);
	}
	while (!stop && probes_sent < MAX_PROBES)
	{
		char		q[256];
		PGresult   *res;
		int			n = probes_sent;

		snprintf(q, sizeof(q),
				 "SELECT seq FROM chat.send_message(%lld, %lld, 'probe', '%s%d')",
				 probe_sender, probe_conv, tag + 1, n);
		start_at[n] = now_ms();
		res = PQexec(conn, q);
		commit_at[n] = now_ms();
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
		{
			fprintf(stderr, "probe: %s", PQerrorMessage(conn));
			exit(2);
		}
		PQclear(res);
		probes_sent = n + 1;
		usleep(10000);
	}
	PQfinish(conn);
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return x < y ? -1 : x > y;
}

/* p-th percentile of sorted v[0..n-1]. */
static double
pct(double *v, int n, double p)
{
	int			i = (int) (p / 100.0 * (n - 1) + 0.5);

	return n ? v[i] : 0;
}

int
main(int argc, char **argv)
{
	char		conninfo[256],
				listen[128];
	PGconn	   *conn;
	PGresult   *res;
	double		end;
	double		next_heartbeat = 0;
	long		notifications = 0,
				events = 0;
	pthread_t	prober;
	int			i,
				n = 0,
				missing = 0;
	double	   *lat,
			   *lat_start;

	if (argc < 4)
	{
		fprintf(stderr, "usage: %s DBNAME NODE SECONDS [PROBE_CONV PROBE_SENDER]\n", argv[0]);
		return 2;
	}
	dbname = argv[1];
	taglen = snprintf(tag, sizeof(tag), "\"p%d-", (int) getpid());
	snprintf(conninfo, sizeof(conninfo), "dbname=%s", dbname);
	conn = PQconnectdb(conninfo);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "%s", PQerrorMessage(conn));
		return 2;
	}
	snprintf(listen, sizeof(listen), "LISTEN chat_node_%s", argv[2]);
	res = PQexec(conn, listen);
	PQclear(res);
	if (argc >= 6)
	{
		probe_conv = atoll(argv[4]);
		probe_sender = atoll(argv[5]);
		pthread_create(&prober, NULL, probe_thread, NULL);
	}
	end = now_ms() + atof(argv[3]) * 1000.0;
	while (now_ms() < end)
	{
		struct pollfd pfd = {PQsocket(conn), POLLIN, 0};
		PGnotify   *nt;

		if (now_ms() > next_heartbeat)
		{
			/* like a gateway: keep the node's sessions online */
			snprintf(listen, sizeof(listen), "SELECT chat.node_heartbeat('%s')", argv[2]);
			PQclear(PQexec(conn, listen));
			next_heartbeat = now_ms() + 5000;
		}
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		PQconsumeInput(conn);
		while ((nt = PQnotifies(conn)) != NULL)
		{
			double		t = now_ms();
			const char *p = nt->extra;
			const char *m;
			long		lines = 1;

			notifications++;
			/* skip the "v1 <hex HMAC>" signature line */
			if (strncmp(p, "v1 ", 3) == 0 && strchr(p, '\n'))
				p = strchr(p, '\n') + 1;
			for (; *p; p++)
				if (*p == '\n')
					lines++;
			/* commit stamps (issue 11) are pairs too, but no events */
			for (m = strstr(nt->extra, "\n{\"type\":\"committed\","); m;
				 m = strstr(m + 1, "\n{\"type\":\"committed\","))
				lines -= 2;
			events += lines / 2;	/* an event is a header and a JSON line */
			for (m = strstr(nt->extra, tag); m; m = strstr(m + 1, tag))
			{
				int			k = atoi(m + taglen);

				if (k >= 0 && k < MAX_PROBES && recv_at[k] == 0)
					recv_at[k] = t;
			}
			PQfreemem(nt);
		}
	}
	stop = 1;
	if (argc >= 6)
		pthread_join(prober, NULL);
	usleep(200000);
	PQconsumeInput(conn);
	{
		PGnotify   *nt;

		while ((nt = PQnotifies(conn)) != NULL)
		{
			const char *m;

			for (m = strstr(nt->extra, tag); m; m = strstr(m + 1, tag))
			{
				int			k = atoi(m + taglen);

				if (k >= 0 && k < MAX_PROBES && recv_at[k] == 0)
					recv_at[k] = now_ms();
			}
			PQfreemem(nt);
		}
	}
	lat = malloc(sizeof(double) * (probes_sent + 1));
	lat_start = malloc(sizeof(double) * (probes_sent + 1));
	for (i = 0; i < probes_sent; i++)
	{
		if (recv_at[i] == 0)
		{
			missing++;
			continue;
		}
		lat[n] = recv_at[i] - commit_at[i];
		lat_start[n++] = recv_at[i] - start_at[i];
	}
	qsort(lat, n, sizeof(double), cmp_double);
	qsort(lat_start, n, sizeof(double), cmp_double);
	printf("notifications=%ld events=%ld", notifications, events);
	if (argc >= 6)
		printf(" probes=%d missing=%d commit_to_listener_p50_ms=%.2f p99_ms=%.2f"
			   " send_to_listener_p50_ms=%.2f p99_ms=%.2f",
			   probes_sent, missing, pct(lat, n, 50), pct(lat, n, 99),
			   pct(lat_start, n, 50), pct(lat_start, n, 99));
	printf("\n");
	PQfinish(conn);
	return 0;
}
