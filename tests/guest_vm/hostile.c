/* A hostile guest for tests: run by the micro image's PID 1 instead of
 * agentlab-guest when the kernel command line says agentlab.hostile=MODE.
 * It talks to the host over the job port the way an attacker who owns the
 * VM could:
 *
 *   garbage    bytes that are not frames
 *   oversized  a frame header announcing a 2 GiB payload
 *   silent     opens the port and never says anything
 *   noexit     a proper HELLO and STARTED, then heartbeats forever, no EXIT
 *   flood      HELLO, STARTED, then 64 KiB STDOUT frames as fast as it can
 *   artifacts  an artifact tarball with ../ paths, an absolute path, a
 *              symlink to / and a file behind it, a device node and a setuid
 *              file, then EXIT 0
 *   lies       frames the host never accepts from a guest (START, JOB)
 */
#include "hostile.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "provision/proto/proto.h"

static int port = -1;

static void write_all(const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(port, p, len);
        if (n <= 0)
            return; /* the host closed us: nothing more to do */
        p += n;
        len -= (size_t)n;
    }
}

static void frame(uint8_t type, const void *payload, uint32_t len)
{
    uint8_t hdr[AL_PROTO_HEADER_SIZE];
    al_frame_header_encode(hdr, type, len);
    write_all(hdr, sizeof(hdr));
    if (len)
        write_all(payload, len);
}

static void hello(void)
{
    struct al_tlv_buf b = {0};
    al_tlv_add_str(&b, AL_TLV_VERSION, "1");
    frame(AL_FRAME_HELLO, b.data, (uint32_t)b.len);
    al_tlv_buf_free(&b);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits for the host's START (after JOB) so the attack begins with a job. */
static void wait_for_start(void)
{
    struct al_frame_decoder d = {0};
    uint8_t buf[4096];
    for (;;) {
        ssize_t n = read(port, buf, sizeof(buf));
        if (n <= 0)
            return;
        size_t off = 0;
        while (off < (size_t)n) {
            size_t used;
            struct al_frame f;
            int r = al_frame_decoder_feed(&d, buf + off, (size_t)n - off, &used, &f);
            if (r < 0)
                return;
            off += used;
            if (r == 1 && f.type == AL_FRAME_START) {
                al_frame_decoder_free(&d);
                return;
            }
            if (r == 0)
                break;
        }
    }
}

/* One ustar header + data, padded to 512. */
static size_t tar_entry(uint8_t *out, const char *name, char type, unsigned mode, const char *link,
                        const char *data)
{
    size_t len = data ? strlen(data) : 0;
    memset(out, 0, 512);
    snprintf((char *)out, 100, "%s", name);
    snprintf((char *)out + 100, 8, "%07o", mode);
    snprintf((char *)out + 108, 8, "%07o", 0);
    snprintf((char *)out + 116, 8, "%07o", 0);
    snprintf((char *)out + 124, 12, "%011o", (unsigned)(len & 0xffffff));
    snprintf((char *)out + 136, 12, "%011o", 0);
    out[156] = (uint8_t)type;
    if (link)
        snprintf((char *)out + 157, 100, "%s", link);
    memcpy(out + 257, "ustar", 6);
    memcpy(out + 263, "00", 2);
    memset(out + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += out[i];
    snprintf((char *)out + 148, 8, "%06o", sum);
    size_t total = 512;
    if (len) {
        memset(out + 512, 0, (len + 511) / 512 * 512);
        memcpy(out + 512, data, len);
        total += (len + 511) / 512 * 512;
    }
    return total;
}

static void artifacts(void)
{
    static uint8_t tar[64 * 1024];
    size_t n = 0;
    n += tar_entry(tar + n, "good.txt", '0', 0644, NULL, "a harmless artifact\n");
    n += tar_entry(tar + n, "../../../../tmp/agentlab-pwned-dotdot", '0', 0644, NULL, "pwned\n");
    n += tar_entry(tar + n, "/tmp/agentlab-pwned-absolute", '0', 0644, NULL, "pwned\n");
    n += tar_entry(tar + n, "root", '2', 0777, "/", NULL);
    n += tar_entry(tar + n, "root/tmp/agentlab-pwned-symlink", '0', 0644, NULL, "pwned\n");
    n += tar_entry(tar + n, "null", '3', 0666, NULL, NULL);
    n += tar_entry(tar + n, "suid", '0', 04755, NULL, "#!/bin/sh\n");
    memset(tar + n, 0, 1024);
    n += 1024;
    frame(AL_FRAME_ARTIFACT, tar, (uint32_t)n);
    struct al_tlv_buf b = {0};
    al_tlv_add_u64(&b, AL_TLV_BYTES, n);
    al_tlv_add_u64(&b, AL_TLV_FILES, 7);
    frame(AL_FRAME_ARTIFACT_END, b.data, (uint32_t)b.len);
    al_tlv_buf_free(&b);
    b = (struct al_tlv_buf){0};
    al_tlv_add_u64(&b, AL_TLV_EXIT_CODE, 0);
    al_tlv_add_str(&b, AL_TLV_REASON, "exited");
    frame(AL_FRAME_EXIT, b.data, (uint32_t)b.len);
    al_tlv_buf_free(&b);
}

void hostile_run(const char *mode, const char *port_path)
{
    port = open(port_path, O_RDWR | O_CLOEXEC);
    if (port < 0) {
        fprintf(stderr, "hostile: cannot open %s\n", port_path);
        return;
    }
    fprintf(stderr, "hostile: mode %s\n", mode);
    if (strcmp(mode, "garbage") == 0) {
        const char junk[] = "GET / HTTP/1.1\r\nHost: host\r\n\r\n\xff\xfe\x00\x01";
        for (int i = 0; i < 100; i++) {
            write_all(junk, sizeof(junk));
            sleep_ms(100);
        }
    } else if (strcmp(mode, "oversized") == 0) {
        uint8_t hdr[AL_PROTO_HEADER_SIZE] = {AL_FRAME_STDOUT, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff};
        write_all(hdr, sizeof(hdr));
        static uint8_t zeros[65536];
        for (int i = 0; i < 64; i++)
            write_all(zeros, sizeof(zeros));
    } else if (strcmp(mode, "silent") == 0) {
        for (;;)
            sleep_ms(1000);
    } else if (strcmp(mode, "noexit") == 0) {
        hello();
        wait_for_start();
        frame(AL_FRAME_STARTED, NULL, 0);
        for (;;) {
            frame(AL_FRAME_HEARTBEAT, NULL, 0);
            sleep_ms(AL_PROTO_HEARTBEAT_MS);
        }
    } else if (strcmp(mode, "flood") == 0) {
        hello();
        wait_for_start();
        frame(AL_FRAME_STARTED, NULL, 0);
        static char chunk[65536];
        memset(chunk, 'x', sizeof(chunk));
        for (;;)
            frame(AL_FRAME_STDOUT, chunk, sizeof(chunk));
    } else if (strcmp(mode, "artifacts") == 0) {
        hello();
        wait_for_start();
        frame(AL_FRAME_STARTED, NULL, 0);
        artifacts();
        sleep_ms(60000);
    } else if (strcmp(mode, "lies") == 0) {
        hello();
        frame(AL_FRAME_START, NULL, 0);
        frame(AL_FRAME_JOB, "x", 1);
        sleep_ms(60000);
    }
    close(port);
}
