/* The pod sandbox's process and the real node's PID-1 reaper (devkit/realnode.py).
 *
 * Like Kubernetes' pause container: it sleeps, reaps every child that exits
 * (it is PID 1 of its PID namespace, so orphans land on it) and exits 0 on
 * SIGINT or SIGTERM. Built statically with gcc, so the pause image is this
 * one file and nothing else.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        printf("kubestream-pause 1\n");
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = leave;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) {
        perror("sigaction");
        return 1;
    }
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        perror("sigaction");
        return 1;
    }
    reap(0);  /* children that exited before the handler was installed */
    for (;;) {
        pause();
    }
    return 0;
}
