// Package flatmap is a hash table for the few tables that hold an entry per
// remote pod IP (the ipcache store and the reconciler's claims): the entries
// sit in one dense array, sized to their count when it is known (Reserve),
// and a separate open-addressing index (linear probing, backward-shift
// deletion) of 5 bytes per bucket at up to 80 % load finds them. Go's map,
// sized for 250,000 keys, takes 524,288 slots of key and value (≈ 48 %
// load); here the slack is in the 5-byte buckets only. Unlike a Go map, a
// table that lost most of its entries (a large remote left) gives the room
// back.
package flatmap
