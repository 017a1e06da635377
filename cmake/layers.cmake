# Layers as libraries (see ARCHITECTURE.md).
#
# al_layer_includes(NAME DIRS dir...) fills build/layers/NAME with a link to
# every header in each of DIRS (not their subfolders), under the same path
# from the top of the source tree. That folder is the layer's only include
# directory, so "runner/engine/engine.h" resolves only in the engine layer and
# in the layers that use it.
function(al_layer_includes name)
  cmake_parse_arguments(L "" "" "DIRS" ${ARGN})
  set(stage ${CMAKE_BINARY_DIR}/layers/${name})
  file(REMOVE_RECURSE ${stage})
  foreach(dir ${L_DIRS})
    file(GLOB headers CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/${dir}/*.h)
    file(MAKE_DIRECTORY ${stage}/${dir})
    foreach(h ${headers})
      get_filename_component(base ${h} NAME)
      file(CREATE_LINK ${h} ${stage}/${dir}/${base} SYMBOLIC)
    endforeach()
  endforeach()
endfunction()

# al_layer(NAME DIRS dir... [USES layer...] [LIBS lib...] [EXCLUDE regex])
# builds the static library al_NAME from the .c files in DIRS (not their
# subfolders; EXCLUDE drops the programs' main files), with the layer's include
# directory and those of the layers it USES (transitively), linked to those
# layers and to LIBS.
function(al_layer name)
  cmake_parse_arguments(L "" "EXCLUDE" "DIRS;USES;LIBS" ${ARGN})
  al_layer_includes(${name} DIRS ${L_DIRS})
  set(sources)
  foreach(dir ${L_DIRS})
    file(GLOB srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/${dir}/*.c)
    list(APPEND sources ${srcs})
  endforeach()
  if(L_EXCLUDE)
    list(FILTER sources EXCLUDE REGEX "${L_EXCLUDE}")
  endif()
  add_library(al_${name} STATIC ${sources})
  add_dependencies(al_${name} al_check_includes)
  target_include_directories(al_${name} PUBLIC ${CMAKE_BINARY_DIR}/layers/${name})
  set(deps)
  foreach(u ${L_USES})
    list(APPEND deps al_${u})
  endforeach()
  target_link_libraries(al_${name} PUBLIC ${deps} ${L_LIBS})
  # for tests/scripts/layering.sh: which layers this one may use
  file(WRITE ${CMAKE_BINARY_DIR}/layers/${name}.uses "${L_USES}\n")
endfunction()
