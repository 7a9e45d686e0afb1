/*
 * fanout-pause: the sandbox ("pause") process of every pod on the test cluster's real nodes.
 *
 * containerd starts one per pod to hold the pod's namespaces; no registry is reachable here, so
 * the project builds its own instead of pulling registry.k8s.io/pause. It does what a sandbox
 * process must: sleep until told to stop, exit 0 on SIGINT or SIGTERM, and reap orphans when it
 * is PID 1 of a pod that shares its PID namespace. Linked statically, so its image holds this
 * one file. Built by hack/image.sh.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "1"

static void stop(int signo) {
  (void)signo;
  _exit(0);
}

static void reap(int signo) {
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "-v") == 0) {
    puts("fanout-pause " VERSION);
    return 0;
  }
  if (getpid() != 1) {
    fputs("fanout-pause: not running as PID 1; orphans of this pod are reaped elsewhere\n", stderr);
  }
  struct sigaction on_stop;
  memset(&on_stop, 0, sizeof on_stop);
  on_stop.sa_handler = stop;
  if (sigaction(SIGINT, &on_stop, NULL) != 0 || sigaction(SIGTERM, &on_stop, NULL) != 0) {
    perror("fanout-pause: sigaction");
    return 1;
  }
  struct sigaction on_child;
  memset(&on_child, 0, sizeof on_child);
  on_child.sa_handler = reap;
  on_child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGCHLD, &on_child, NULL) != 0) {
    perror("fanout-pause: sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
