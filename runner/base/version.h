/* The identity of this build, for --version, logs and bug reports.
 *
 * AL_VERSION (a compile definition from CMakeLists.txt) is the project's
 * version. al_git_revision is the git revision the programs were built from:
 * 12 hex digits, "-dirty" appended when tracked files had changes, or
 * "unknown" outside a git checkout (or what -DAL_GIT_REVISION said). It is
 * generated at every build (cmake/git_revision.cmake) into a library that
 * only the programs link, so a new commit relinks them and nothing else.
 */
#ifndef AL_RUNNER_VERSION_H
#define AL_RUNNER_VERSION_H

extern const char al_git_revision[];

#endif
