# mtmd-topv.cmake - included by llama.cpp's tools/mtmd/CMakeLists.txt (patches/02-mtmd-topv-hooks.patch):
# adds the TopV stage (this directory) to the mtmd target and links the pass (native/) into it statically,
# so libmtmd, llama-mtmd-cli and llama-server prune with the project's own sources, not a copy.

set(_topv_mtmd_shared ${BUILD_SHARED_LIBS})
set(BUILD_SHARED_LIBS OFF)
set(TOPV_NATIVE ${GGML_NATIVE} CACHE BOOL "" FORCE)   # -march=native for the pass when ggml is built so
add_subdirectory(${CMAKE_CURRENT_LIST_DIR}/.. ${CMAKE_CURRENT_BINARY_DIR}/topv)
set(BUILD_SHARED_LIBS ${_topv_mtmd_shared})

target_sources(mtmd PRIVATE
    ${CMAKE_CURRENT_LIST_DIR}/mtmd-topv.cpp
    ${CMAKE_CURRENT_LIST_DIR}/mtmd-topv-layouts.cpp
    ${CMAKE_CURRENT_LIST_DIR}/mtmd-topv.h
    ${CMAKE_CURRENT_LIST_DIR}/mtmd-topv-impl.h)
target_link_libraries(mtmd PRIVATE topv)
# public: mtmd.h includes mtmd-topv.h, which includes topv.h
target_include_directories(mtmd PUBLIC ${CMAKE_CURRENT_LIST_DIR} ${CMAKE_CURRENT_LIST_DIR}/../include)
