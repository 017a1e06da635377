/* The systemd readiness protocol (Type=notify), without libsystemd: one
 * datagram to the socket named in $NOTIFY_SOCKET. A no-op when the
 * variable is unset (foreground runs, containers, tests). */
#ifndef AL_SD_NOTIFY_H
#define AL_SD_NOTIFY_H

/* Sends state, e.g. "READY=1\nSTATUS=ready". Returns 0 (also when not
 * under systemd) or a negative errno. */
int al_sd_notify(const char *state);

#endif
