/* A paced UDP load generator for bench/ingest.py (compiled there with gcc at bench time).
 *
 *   udp_sender HOST PORT FILE DATAGRAMS_PER_SECOND SECONDS THREADS SOCKETS_PER_THREAD
 *
 * FILE holds the workload: datagrams, each as a 4-byte little-endian length then its bytes.
 * Thread t sends datagrams t, t+THREADS, t+2*THREADS, ... of the file, wrapping around, with
 * sendmmsg in batches, paced to DATAGRAMS_PER_SECOND / THREADS, rotating over its own
 * SOCKETS_PER_THREAD connected sockets (distinct source ports, as many clients would be, so
 * SO_REUSEPORT spreads them over the receivers). At the end it prints one line per thread:
 * "sent THREAD COUNT" (COUNT datagrams, in the order above), then "elapsed SECONDS".
 * Bench tool only: no error recovery beyond reporting.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32

static struct iovec *datagrams;
static size_t n_datagrams;
static struct sockaddr_in target;
static double rate_per_thread;
static double seconds;
static int n_threads, n_sockets;

struct worker {
    pthread_t id;
    int index;
    unsigned long long sent;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double when) {
    struct timespec ts;
    ts.tv_sec = (time_t)when;
    ts.tv_nsec = (long)((when - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void *run(void *arg) {
    struct worker *w = arg;
    int *socks = calloc((size_t)n_sockets, sizeof(int));
    for (int s = 0; s < n_sockets; s++) {
        socks[s] = socket(AF_INET, SOCK_DGRAM, 0);
        int sndbuf = 4 << 20;
        setsockopt(socks[s], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        if (connect(socks[s], (struct sockaddr *)&target, sizeof target) != 0) {
            perror("connect");
            exit(1);
        }
    }
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    size_t next = (size_t)w->index % n_datagrams;
    double start = now();
    double end = start + seconds;
    unsigned long long sent = 0;
    int sock = 0;
    for (;;) {
        double t = now();
        if (t >= end)
            break;
        double due = start + (double)sent / rate_per_thread;
        if (due > t)
            sleep_until(due);
        int batch = BATCH;
        for (int i = 0; i < batch; i++) {
            msgs[i].msg_hdr.msg_iov = &datagrams[next];
            msgs[i].msg_hdr.msg_iovlen = 1;
            next = (next + (size_t)n_threads) % n_datagrams;
        }
        int done = sendmmsg(socks[sock], msgs, (unsigned)batch, 0);
        if (done < 0)
            done = 0;
        if (done < batch) {
            /* Rewind the datagrams that did not go out, so the count stays exact. */
            for (int i = done; i < batch; i++)
                next = (next + n_datagrams - (size_t)n_threads % n_datagrams) % n_datagrams;
        }
        sent += (unsigned long long)done;
        sock = (sock + 1) % n_sockets;
    }
    w->sent = sent;
    for (int s = 0; s < n_sockets; s++)
        close(socks[s]);
    free(socks);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT FILE DGRAMS_PER_S SECONDS THREADS SOCKETS\n", argv[0]);
        return 2;
    }
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", argv[1]);
        return 2;
    }
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        perror("open");
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *blob = malloc((size_t)size);
    if (fread(blob, 1, (size_t)size, f) != (size_t)size) {
        perror("read");
        return 2;
    }
    fclose(f);
    size_t cap = 1024;
    datagrams = malloc(cap * sizeof *datagrams);
    for (long off = 0; off + 4 <= size;) {
        uint32_t len = (uint32_t)blob[off] | (uint32_t)blob[off + 1] << 8 |
                       (uint32_t)blob[off + 2] << 16 | (uint32_t)blob[off + 3] << 24;
        off += 4;
        if (n_datagrams == cap) {
            cap *= 2;
            datagrams = realloc(datagrams, cap * sizeof *datagrams);
        }
        datagrams[n_datagrams].iov_base = blob + off;
        datagrams[n_datagrams].iov_len = len;
        n_datagrams++;
        off += len;
    }
    n_threads = atoi(argv[6]);
    n_sockets = atoi(argv[7]);
    rate_per_thread = atof(argv[4]) / n_threads;
    seconds = atof(argv[5]);
    if (n_datagrams == 0 || n_threads < 1 || n_sockets < 1 || rate_per_thread <= 0) {
        fprintf(stderr, "nothing to send\n");
        return 2;
    }
    struct worker *workers = calloc((size_t)n_threads, sizeof *workers);
    double start = now();
    for (int t = 0; t < n_threads; t++) {
        workers[t].index = t;
        pthread_create(&workers[t].id, NULL, run, &workers[t]);
    }
    for (int t = 0; t < n_threads; t++)
        pthread_join(workers[t].id, NULL);
    double elapsed = now() - start;
    for (int t = 0; t < n_threads; t++)
        printf("sent %d %llu\n", t, workers[t].sent);
    printf("elapsed %.6f\n", elapsed);
    return 0;
}
