/* Hostile guest behaviours for tests (see hostile.c). */
#ifndef AL_TEST_HOSTILE_H
#define AL_TEST_HOSTILE_H

/* Plays MODE against the host on the job port at port_path; returns when
 * the attack is over (or at once for an unknown mode). */
void hostile_run(const char *mode, const char *port_path);

#endif
