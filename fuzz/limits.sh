# Sourced by fuzz/run.sh and fuzz/soak.sh: the memory bounds every fuzz run
# enforces (libFuzzer's -malloc_limit_mb and -rss_limit_mb).
# Per-target bound on the largest single allocation (MB). A reader holds at
# most one frame plus one chunk: 16 MiB chunks at most, so 64 MB bounds any
# allocation of the archive paths and 16 MB the small parsers.
# shellcheck disable=SC2034  # used by the scripts that source this file
declare -A malloc_mb=(
    [header]=16 [frames_encrypted]=64 [frames_gzip]=64 [trailer]=16
    [inflate]=64 [decode]=64 [archive]=64 [catalog]=16 [layout]=16
    [latest]=16 [key]=16 [wal]=16 [segment]=64
)
# Peak RSS of the whole fuzzer process (MB).
# shellcheck disable=SC2034
rss_mb=512
