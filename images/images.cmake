# Golden images: where the builder finds recipes, the guest helper and its
# unit, and what gets installed. Included from the top-level CMakeLists.txt.
target_compile_definitions(al_images PRIVATE
  AL_DATADIR="${CMAKE_INSTALL_FULL_DATADIR}"
  AL_LIBEXECDIR="${CMAKE_INSTALL_FULL_LIBEXECDIR}")
# Development fallbacks, used only when the files exist: recipes and the guest
# unit from this source tree. Packages turn them off, so that an installed
# program never looks into the tree it was built in (scripts/package.sh).
option(AL_SOURCE_FALLBACKS "Find recipes and the guest unit in the source tree too" ON)
if(AL_SOURCE_FALLBACKS)
  target_compile_definitions(al_images PRIVATE
    AL_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    AL_SOURCE_RECIPES="${PROJECT_SOURCE_DIR}/images/recipes")
endif()

install(DIRECTORY images/recipes/ DESTINATION ${CMAKE_INSTALL_DATADIR}/agentlab/recipes
  USE_SOURCE_PERMISSIONS)
if(EXISTS ${PROJECT_SOURCE_DIR}/provision/guest/agentlab-guest.service)
  install(FILES provision/guest/agentlab-guest.service DESTINATION ${CMAKE_INSTALL_DATADIR}/agentlab)
endif()
