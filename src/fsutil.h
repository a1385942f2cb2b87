/* fsutil.h — the few file-system steps every writer shares: mkdir -p, fsync of
 * a path, and a small text file written atomically (.tmp, fsync, rename). */
#ifndef DSV3_FSUTIL_H
#define DSV3_FSUTIL_H

/* Creates dir and its parents (mode 0777 & ~umask); 0, or -1 with errno set. */
int fs_mkdir_p(const char *dir);

/* fsync(2) of the file or directory at path; 0, or -1 with errno set. */
int fs_fsync_path(const char *path);

/* Writes text plus a newline to path via path.tmp, fsync and rename, so path
 * is either the old file or the whole new one; 0, or -1 (the .tmp removed). */
int fs_write_text(const char *path, const char *text);

#endif
