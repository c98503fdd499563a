/* supervise.c: --workers: the parent process only forks the workers,
 * restarts the ones that die (with backoff) and forwards signals. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include "gateway.h"

static pid_t *children;
static time_t *started;		/* when each worker was (re)started */
static unsigned *restart_delay;	/* seconds; doubles while a worker keeps dying young */
static time_t *restart_at;	/* 0: running (or stopped for good) */

/* Forks worker i (node <node>_<i>); the child never returns. */
static pid_t
supervise_spawn(int i, const char *base_node)
{
	pid_t parent = getpid(), pid = fork();

	if (pid == 0) {
		char *node = xmalloc(strlen(base_node) + 16);
		sprintf(node, "%s_%d", base_node, i);
		cfg.node = node;
		metrics_take_slot(i);
		log_setup(cfg.log_json, cfg.log_min, cfg.node, cfg.log_file);
		sigset_t none;
		sigemptyset(&none);
		signal(SIGCHLD, SIG_DFL);
		sigprocmask(SIG_SETMASK, &none, NULL);
		/* A supervisor killed with -9 leaves no orphans: they drain. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			exit(0);
		exit(server_run());
	}
	if (pid < 0)
		log_msg(LOG_ERROR, 0, "fork failed: %s", strerror(errno));
	else
		log_msg(LOG_INFO, 0, "worker %d started (pid %d)", i, (int)pid);
	return pid;
}

/* SIGCHLD handler: only interrupts sigsuspend. */
static void
on_child(int sig)
{
	(void)sig;
}

/* Installs the supervisor's handlers and blocks its signals; *old is the
 * mask sigsuspend waits with (blocked except inside sigsuspend: no signal
 * slips between a check and the wait). */
static void
supervise_signals(sigset_t *old)
{
	static const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGALRM };
	struct sigaction sa;
	sigset_t mask;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		sa.sa_handler = sigs[i] == SIGCHLD || sigs[i] == SIGALRM ? on_child : server_on_signal;
		sigaction(sigs[i], &sa, NULL);
		sigaddset(&mask, sigs[i]);
	}
	sigprocmask(SIG_BLOCK, &mask, old);
}

/* Sends sig to every running worker. */
static void
supervise_kill_all(int sig)
{
	for (int i = 0; i < cfg.workers; i++)
		if (children[i] > 0)
			kill(children[i], sig);
}

/* Collects dead workers; unless terminating, schedules each one's restart.
 * Returns how many died. */
static int
supervise_reap(int terminating)
{
	int status, dead = 0;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < cfg.workers; i++) {
			if (children[i] != pid)
				continue;
			children[i] = 0;
			metrics_slot_died(i);
			dead++;
			if (terminating)
				break;
			log_msg(LOG_WARN, 0, "worker %d (pid %d) died (%s %d): restarting",
				i, (int)pid, WIFSIGNALED(status) ? "signal" : "status",
				WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
			/* No tight restart loop: a worker that dies within 10 s
			 * of its start waits twice as long next time (to 60 s). */
			int young = time(NULL) - started[i] < 10;
			if (!young)
				restart_delay[i] = 1;
			restart_at[i] = time(NULL) + restart_delay[i];
			if (young)
				restart_delay[i] = restart_delay[i] * 2 > 60 ? 60 : restart_delay[i] * 2;
			break;
		}
	}
	return dead;
}

/* Restarts the workers whose time has come; returns how many started and
 * sets the SIGALRM for the next one (restarts are due on a timer, never in
 * a sleep that would hold up SIGTERM). */
static int
supervise_restart(const char *base)
{
	time_t now = time(NULL), next = 0;
	int born = 0;

	for (int i = 0; i < cfg.workers; i++) {
		if (!restart_at[i])
			continue;
		if (now >= restart_at[i]) {
			restart_at[i] = 0;
			started[i] = now;
			if ((children[i] = supervise_spawn(i, base)) > 0)
				born++;
		} else if (!next || restart_at[i] < next) {
			next = restart_at[i];
		}
	}
	alarm(next ? (unsigned)(next - now) : 0);
	return born;
}

/* --workers: forks the workers, restarts dead ones, forwards signals. */
int
supervise_run(void)
{
	char *base = cfg.node;
	sigset_t old;
	int alive = 0, terminating = 0;

	children = xcalloc((size_t)cfg.workers, sizeof(*children));
	started = xcalloc((size_t)cfg.workers, sizeof(*started));
	restart_delay = xcalloc((size_t)cfg.workers, sizeof(*restart_delay));
	restart_at = xcalloc((size_t)cfg.workers, sizeof(*restart_at));
	metrics_share(cfg.workers);
	supervise_signals(&old);
	for (int i = 0; i < cfg.workers; i++) {
		started[i] = time(NULL);
		restart_delay[i] = 1;
		if ((children[i] = supervise_spawn(i, base)) > 0)
			alive++;
	}
	for (;;) {
		if (sig_hup) {
			sig_hup = 0;
			log_reopen();
			supervise_kill_all(SIGHUP);
		}
		if (sig_term && !terminating) {
			terminating = 1;
			log_msg(LOG_INFO, 0, "SIGTERM: stopping %d workers", alive);
			supervise_kill_all(SIGTERM);
		}
		alive -= supervise_reap(terminating);
		if (terminating && alive <= 0)
			break;
		if (!terminating)
			alive += supervise_restart(base);
		else
			alarm(0);
		sigsuspend(&old);
	}
	log_msg(LOG_INFO, 0, "all workers stopped");
	return 0;
}
