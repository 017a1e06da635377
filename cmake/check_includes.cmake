# cmake -DSRC=<source dir> -DSTAMP=<file> -P check_includes.cmake
#
# Also: no .c file of the product (runner/, provision/, images/) is over
# 1,200 lines; a file that grows past it is split along its seams, with a
# private header for what the parts share (ARCHITECTURE.md).
#
# One include spelling: a project header is included by its path from the
# top of the source tree ("runner/base/util.h"), never relative to the file
# or with "..". Tests may also include their own helpers from their folder or
# tests/support. Run at every build that changed a source (CMakeLists.txt);
# any other spelling fails the build, naming the file and line.
file(GLOB_RECURSE files
  ${SRC}/runner/*.c ${SRC}/runner/*.h ${SRC}/provision/*.c ${SRC}/provision/*.h
  ${SRC}/images/*.c ${SRC}/images/*.h ${SRC}/tests/*.c ${SRC}/tests/*.h)
set(bad "")
foreach(f ${files})
  file(RELATIVE_PATH rel ${SRC} ${f})
  get_filename_component(dir ${f} DIRECTORY)
  file(STRINGS ${f} lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
  foreach(line ${lines})
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([^\"]*)\".*" "\\1" inc "${line}")
    set(ok FALSE)
    if(inc MATCHES "\\.\\.")
      set(ok FALSE)
    elseif(inc MATCHES "^(runner|provision|images)/")
      if(EXISTS ${SRC}/${inc})
        set(ok TRUE)
      endif()
    elseif(rel MATCHES "^tests/")
      if(EXISTS ${dir}/${inc} OR EXISTS ${SRC}/tests/support/${inc})
        set(ok TRUE)
      endif()
    endif()
    if(NOT ok)
      string(APPEND bad "  ${rel}: #include \"${inc}\"\n")
    endif()
  endforeach()
endforeach()
set(too_long "")
foreach(f ${files})
  file(RELATIVE_PATH rel ${SRC} ${f})
  if(rel MATCHES "^tests/" OR NOT rel MATCHES "\\.c$")
    continue()
  endif()
  file(READ ${f} content)
  string(REGEX MATCHALL "\n" newlines "${content}")
  list(LENGTH newlines n)
  if(n GREATER 1200)
    string(APPEND too_long "  ${rel}: ${n} lines\n")
  endif()
endforeach()
if(too_long)
  message(FATAL_ERROR "No .c file may be over 1,200 lines; split these along their seams:\n"
    "${too_long}")
endif()
if(bad)
  message(FATAL_ERROR "Include project headers by their path from the top of the tree "
    "(e.g. \"runner/base/util.h\"); these do not:\n${bad}")
endif()
file(WRITE ${STAMP} "")
