; qreplica counter guest: a 512-byte x86 boot sector that proves replication.
;
; Build: nasm -f bin -o counter.bin counter.asm   (guest/build.ts does this and caches by source hash)
;
; Disk layout (512-byte sectors):
;   LBA 0  this boot sector (0x55AA signature)
;   LBA 1  counter record, little endian:
;            +0   8 bytes  magic "QRCNTR01"
;            +8   u64      counter: incremented and written back once per BIOS timer tick
;            +16  u32      boots: boot number, incremented in memory at boot and persisted
;                          with the first counter write
;            +20  zeroes
;          A sector without the magic (a fresh, all-zero disk) starts at counter 0, boots 0.
;
; Serial console: COM1 (0x3F8), 115200 8N1, polled; every line ends in CR LF, numbers in decimal.
;   QREPLICA-BOOT <boots>        once per boot, after LBA 1 was read (boots is 1 on a fresh disk)
;   QREPLICA-COUNTER <n>         first the value found on disk at boot (not incremented), then
;                                the new value after every successful write of LBA 1
;   QREPLICA-ERROR <op> <ah>     int 13h failed (op READ or WRITE, ah = BIOS status); then halts
;
; Rate: one increment + one write + one line per BIOS timer tick (IRQ0 from the PIT that the BIOS
; programmed, 18.2 Hz), waiting with sti/hlt so the vCPU idles between ticks under TCG and KVM.
; We never program the PIT ourselves. The counter on disk is therefore at most one tick
; (~55 ms) older than the last line printed.
;
; Disk access: BIOS int 13h extensions (AH=42h read, AH=43h write) on the drive the BIOS booted
; us from (DL at entry), so it works with any disk SeaBIOS can boot: IDE/AHCI or virtio-blk.

bits 16
org 0x7C00

REC     equ 0x7E00          ; 512-byte buffer holding LBA 1
NUMEND  equ 0x8040          ; decimal digits are built downwards from here
SCRATCH equ 0x8050          ; qword for printing an error status
TICKS   equ 0x046C          ; BIOS data area: timer ticks since midnight (low word is enough)

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    jmp 0:.norm             ; normalise CS:IP to 0000:7Cxx
.norm:
    sti
    cld
    mov [drive], dl

    ; COM1: IER=0, DLAB, divisor 1 (115200), 8N1, FIFO on, DTR+RTS
    mov si, uart_init
.uart:
    lodsw                   ; al = register offset, ah = value
    cmp al, 0xFF
    je .uart_done
    mov dx, 0x3F8
    add dl, al
    mov al, ah
    out dx, al
    jmp .uart
.uart_done:

    ; read LBA 1
    mov ah, 0x42
    call disk_io
    jnc .read_ok
    mov si, s_read
    jmp fail
.read_ok:
    mov si, REC
    mov di, magic
    mov cx, 8
    repe cmpsb
    je .have_record
    ; fresh (or foreign) sector: start a new record
    mov di, REC
    xor ax, ax
    mov cx, 256
    rep stosw
    mov si, magic
    mov di, REC
    mov cx, 8
    rep movsb
.have_record:
    inc dword [REC + 16]

    mov si, s_boot
    call puts
    mov eax, [REC + 16]
    xor edx, edx
    call print_dec          ; QREPLICA-BOOT <boots>
    call print_counter      ; QREPLICA-COUNTER <value on disk>

main_loop:
    ; wait for the next BIOS timer tick
    mov ax, [TICKS]
.wait:
    sti
    hlt
    cmp ax, [TICKS]
    je .wait

    add dword [REC + 8], 1
    adc dword [REC + 12], 0
    mov ah, 0x43
    call disk_io
    jnc .written
    mov si, s_write
    jmp fail
.written:
    call print_counter
    jmp main_loop

; int 13h extended read/write of LBA 1 into/from REC; AH = 42h or 43h. CF set on error, AH status.
disk_io:
    mov word [dap + 2], 1   ; the BIOS may overwrite the count with what it transferred
    mov al, 0               ; AH=43h: no verify
    mov si, dap
    mov dl, [drive]
    int 0x13
    ret

; prints "QREPLICA-ERROR <op> <ah>" and halts for good. si = op string, ah = BIOS status
fail:
    push ax
    push si
    mov si, s_error
    call puts
    pop si
    call puts
    pop ax
    movzx eax, ah
    xor edx, edx
    call print_dec
.halt:
    cli
    hlt
    jmp .halt

print_counter:
    mov si, s_counter
    call puts
    mov eax, [REC + 8]
    mov edx, [REC + 12]
    ; fall through

; prints the unsigned 64-bit value edx:eax in decimal, then CR LF
print_dec:
    mov ebx, eax            ; ecx:ebx = value
    mov ecx, edx
    mov ebp, 10
    mov di, NUMEND
    mov byte [di], 0
.digit:
    xor edx, edx
    mov eax, ecx
    div ebp                 ; high half
    mov ecx, eax
    mov eax, ebx
    div ebp                 ; (remainder:low half) / 10, remainder < 10 so no overflow
    mov ebx, eax
    add dl, '0'
    dec di
    mov [di], dl
    mov eax, ecx
    or eax, ebx
    jnz .digit
    mov si, di
    call puts
    mov si, s_crlf
    ; fall through

; prints the zero-terminated string at si on COM1 (polling the line status register)
puts:
    lodsb
    test al, al
    jz .done
    mov ah, al
    mov dx, 0x3FD
.busy:
    in al, dx
    test al, 0x20           ; transmitter holding register empty
    jz .busy
    mov al, ah
    mov dx, 0x3F8
    out dx, al
    jmp puts
.done:
    ret

uart_init:  db 1,0x00, 3,0x80, 0,0x01, 1,0x00, 3,0x03, 2,0xC7, 4,0x03, 0xFF,0
magic:      db "QRCNTR01"
s_boot:     db "QREPLICA-BOOT ", 0
s_counter:  db "QREPLICA-COUNTER ", 0
s_error:    db "QREPLICA-ERROR ", 0
s_read:     db "READ ", 0
s_write:    db "WRITE ", 0
s_crlf:     db 13, 10, 0

align 4
dap:        db 0x10, 0          ; disk address packet: size, reserved
            dw 1                ; sectors
            dw REC, 0           ; buffer offset, segment
            dq 1                ; LBA
drive:      db 0x80

times 510 - ($ - $$) db 0
dw 0xAA55
