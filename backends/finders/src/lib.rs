//! ImageFinders: local files (remote sources follow)
