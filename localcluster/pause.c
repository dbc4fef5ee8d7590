/*
 * The pause program of localcluster's pod sandboxes, written after Kubernetes' build/pause/linux/pause.c:
 * PID 1 of a pod that holds its namespaces, sleeps until signalled, reaps the zombies that are
 * reparented to it, and exits 0 on SIGINT or SIGTERM. Built with `gcc -static` by images.py.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "3.10-localcluster"

static void shut_down(int signo) {
  psignal(signo, "Shutting down, got signal");
  exit(0);
}

static void reap(int signo) {
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "-v") == 0) {
      printf("pause.c %s\n", VERSION);
      return 0;
    }
  }
  struct sigaction down = {.sa_handler = shut_down};
  struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGINT, &down, NULL) < 0) {
    return 1;
  }
  if (sigaction(SIGTERM, &down, NULL) < 0) {
    return 2;
  }
  if (sigaction(SIGCHLD, &child, NULL) < 0) {
    return 3;
  }
  if (getpid() != 1) {
    /* Not an error: pause is also run outside of pod sandboxes. Said once the handlers are in place. */
    fprintf(stderr, "Warning: pause should be the first process\n");
  }
  for (;;) {
    pause();
  }
  fprintf(stderr, "Error: infinite loop terminated\n");
  return 42;
}
