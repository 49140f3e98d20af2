//! Networkers: the host network (CNI networks follow)
