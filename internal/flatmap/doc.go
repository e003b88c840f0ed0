// Package flatmap is a hash table with open addressing (linear probing,
// backward-shift deletion) in one flat array sized to the number of entries,
// not to a power of two: for the few tables that hold an entry per remote
// pod IP (the ipcache store and the reconciler's claims). Go's map, sized for
// 250,000 keys, takes 524,288 slots (≈ 48 % load); this table runs at up to
// 80 % and is presized to 75 % for a known count.
package flatmap
