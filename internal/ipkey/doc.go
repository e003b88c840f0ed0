// Package ipkey holds IP addresses and prefixes in a form without pointers
// (netip.Addr carries one for its zone), for tables of hundreds of
// thousands of entries that the garbage collector then need not scan: the
// agent's read-side ipcache store and the datapath reconciler's claims.
package ipkey
